// Checks shared by the lab's kernel tests: nothing of a lab is left anywhere.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, listNamespaces } from '../../src/lab/run.js';
import { statePath } from '../../src/lab/state.js';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const netmangleBin = join(repoRoot, 'bin', 'netmangle');

/** MAC addresses of every interface (but lo) in the given namespaces: the identity of a lab's veths and bridge. */
export async function macsIn(namespaces: string[]): Promise<Set<string>> {
  const macs = new Set<string>();
  for (const ns of namespaces) {
    const r = await run(['ip', '-n', ns, '-j', 'link', 'show']);
    if (r.code !== 0) continue;
    for (const l of JSON.parse(r.stdout) as Array<{ ifname: string; address?: string }>) {
      if (l.ifname !== 'lo' && l.address) macs.add(l.address);
    }
  }
  return macs;
}

/**
 * Asserts a lab is gone: no namespace of it, no record, and none of its interfaces (known by
 * MAC) in the root namespace or in any namespace that exists.
 */
export async function assertLabGone(name: string, macs: Set<string> = new Set()): Promise<void> {
  const namespaces = await listNamespaces();
  assert.deepEqual(namespaces.filter((ns) => ns.startsWith(`nm-${name}-`)), [], `namespaces of lab ${name} left behind`);
  assert.equal(existsSync(statePath(name)), false, `record of lab ${name} left behind`);
  if (macs.size === 0) return;
  const places: Array<[string, string[]]> = [['(root)', ['ip', '-j', 'link', 'show']], ...namespaces.map((ns): [string, string[]] => [ns, ['ip', '-n', ns, '-j', 'link', 'show']])];
  for (const [where, argv] of places) {
    const r = await run(argv);
    if (r.code !== 0) continue; // a namespace another test removed meanwhile
    for (const l of JSON.parse(r.stdout) as Array<{ ifname: string; address?: string }>) {
      assert.ok(!(l.address && macs.has(l.address)), `interface ${l.ifname} of lab ${name} is still in ${where}`);
    }
  }
}

/** Runs bin/netmangle with arguments and collects its output. */
export function netmangle(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}) {
  return run([process.execPath, netmangleBin, ...args], { timeoutMs: opts.timeoutMs ?? 60_000, env: opts.env });
}
