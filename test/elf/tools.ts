/** External tools the object tests call (clang, llvm-objdump, readelf, bpftool, ip, tc). */
import { test, type TestContext } from 'node:test';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inCI } from '../helpers/kernel.js';

export function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).status === 0;
}

/** Like test(), for tests that need some tools: skipped outside CI when one is missing, failing under CI. */
export function toolTest(name: string, tools: string[], fn: (t: TestContext) => Promise<void> | void): void {
  const missing = tools.filter((t) => !have(t));
  if (missing.length > 0 && !inCI) {
    test(name, { skip: `needs ${missing.join(', ')}` }, () => {});
    return;
  }
  test(name, async (t) => {
    if (missing.length > 0) throw new Error(`missing tools under CI: ${missing.join(', ')}`);
    await fn(t);
  });
}

export function run(cmd: string, args: string[], opts: { allowFail?: boolean } = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  const out = { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  if (!opts.allowFail && out.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${out.status}): ${out.stderr.trim()}`);
  return out;
}

const multiarch = `${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`;

/** clang -O2 -g -target bpf -c: compiles C source text to an object in a fresh directory. */
export function compileC(source: string, name = 'prog'): { path: string; dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'nm-elf-'));
  const src = join(dir, `${name}.c`);
  writeFileSync(src, source);
  const path = join(dir, `${name}.o`);
  run('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${multiarch}`, '-c', src, '-o', path]);
  return { path, dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function clangArgs(): string[] {
  return ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${multiarch}`];
}
