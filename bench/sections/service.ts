/**
 * 7. Fault created → attached: through the control service (`POST /faults` over its unix
 * socket, until the 201), through the library (`attach()` in a running process), and the C
 * workflow (clang, then `tc filter add`), in the same run, rounds interleaved.
 */
import { spawn, spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { join } from 'node:path';
import { attach } from '../../src/api/index.js';
import { NetmangleError } from '../../src/errors.js';
import { ANCHOR_DIR, clangArgv } from '../lib/anchors.js';
import { onCleanup } from '../lib/cleanup.js';
import type { BenchContext, SectionResult } from '../lib/context.js';
import { benchLab, DEV } from '../lib/lab.js';
import { ms, ratio, table, verdict } from '../lib/report.js';
import { BENCH_SEED, pshRule } from '../lib/rules.js';
import { max, median, min } from '../lib/stats.js';

function elapsedMs(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** The p-th percentile (nearest rank) of `values`. */
function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

function call(socketPath: string, method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request({
      socketPath, method, path,
      headers: payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {},
    }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Starts `netmangle serve` on a socket in the bench's directory; resolves once it listens. */
async function startService(ctx: BenchContext): Promise<{ socket: string; stop(): Promise<void> }> {
  const socket = join(ctx.tmp, 'service.sock');
  const child = spawn(join(ctx.root, 'bin', 'netmangle'), ['serve', '--listen', `unix:${socket}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new NetmangleError(`netmangle serve did not start: ${err.trim()}`)), 20_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (/^listening on /m.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new NetmangleError(`netmangle serve exited (${code}): ${err.trim()}`));
    });
  });
  const stop = onCleanup('netmangle serve', () => new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  }));
  return { socket, stop };
}

export async function measureService(ctx: BenchContext): Promise<SectionResult> {
  const creates = ctx.quick ? 20 : 200;
  const cRounds = ctx.quick ? 3 : 20;
  const source = join(ANCHOR_DIR, 'tc_psh_egress.c');
  const object = join(ctx.tmp, 'service_psh.o');
  const clang = clangArgv(source, object);
  const l = await benchLab(ctx, 'service');
  const svc = await startService(ctx);
  try {
    const target = { dev: DEV, hook: 'egress' as const, netns: l.senderNs };
    const spec = (name: string) => ({ name, rules: pshRule.text, ...target, probability: pshRule.probability, seed: BENCH_SEED });
    const timedSync = (argv: string[], what: string): number => {
      const t0 = process.hrtime.bigint();
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
      const t = elapsedMs(t0);
      if (r.status !== 0) throw new NetmangleError(`${what}: \`${argv.join(' ')}\` failed: ${(r.stderr || '').trim().split('\n').pop()}`);
      return t;
    };
    const tc = ['tc', '-n', l.senderNs, 'filter', 'add', 'dev', DEV, 'egress', 'bpf', 'da', 'obj', object, 'sec', 'tc'];
    const tcDel = ['tc', '-n', l.senderNs, 'filter', 'del', 'dev', DEV, 'egress'];
    const viaService = async (i: number): Promise<number> => {
      const t0 = process.hrtime.bigint();
      const r = await call(svc.socket, 'POST', '/faults', spec(`bench-${i}`));
      const t = elapsedMs(t0);
      if (r.status !== 201) throw new NetmangleError(`POST /faults answered ${r.status}: ${r.text}`);
      const d = await call(svc.socket, 'DELETE', `/faults/bench-${i}`);
      if (d.status !== 204) throw new NetmangleError(`DELETE /faults/bench-${i} answered ${d.status}: ${d.text}`);
      return t;
    };
    const viaLibrary = async (): Promise<number> => {
      const t0 = process.hrtime.bigint();
      const fault = await attach(pshRule.text, target, { probability: pshRule.probability, seed: BENCH_SEED });
      const t = elapsedMs(t0);
      await fault.detach();
      return t;
    };
    // Warm-up, untimed: the service's and this process's first attach load modules and probe.
    await viaService(-1);
    await viaLibrary();
    timedSync(['tc', '-n', l.senderNs, 'qdisc', 'add', 'dev', DEV, 'clsact'], 'add clsact');
    timedSync(clang, 'clang');
    timedSync(tc, 'tc filter add');
    timedSync(tcDel, 'tc filter del');

    ctx.log(`service: ${creates} creates through the service and the library, ${cRounds} rounds of clang + tc filter add`);
    const service: number[] = [];
    const library: number[] = [];
    const c: number[] = [];
    const every = Math.max(1, Math.floor(creates / cRounds));
    for (let i = 0; i < creates; i++) {
      service.push(await viaService(i));
      library.push(await viaLibrary());
      if (i % every === 0 && c.length < cRounds) {
        const a = timedSync(clang, 'clang');
        const b = timedSync(tc, 'tc filter add');
        timedSync(tcDel, 'tc filter del');
        c.push(a + b);
      }
    }
    const left = JSON.parse((await call(svc.socket, 'GET', '/faults')).text) as unknown[];
    if (left.length !== 0) throw new NetmangleError(`${left.length} faults left in the service after the rounds`);

    const p = (v: number[]) => [ms(percentile(v, 50)), ms(percentile(v, 99)), `${ms(min(v))}–${ms(max(v))}`];
    const serviceVsC = percentile(service, 50) / median(c);
    const rows = [
      ['service: `POST /faults` over the unix socket until the 201 (parse, check, compile, load, attach, reply)', ...p(service), ratio(serviceVsC)],
      ['library: `await attach(rule, target, triggers)` in a running process', ...p(library), ratio(percentile(library, 50) / median(c))],
      ['anchor: `clang -O2 -target bpf …` + `tc filter add … bpf da obj … sec tc`', ms(median(c)), ms(percentile(c, 99)), `${ms(min(c))}–${ms(max(c))}`, '1.00×'],
    ];
    const md = [
      '## 7. Fault created → attached, through the service',
      '',
      `${creates} faults created one after another through \`netmangle serve\` (a request \`POST /faults\` with the PSH rule, \`${pshRule.text}\`, probability ${pshRule.probability}, ` +
        `at egress of a veth in a lab namespace, timed from sending the request to receiving the 201; each deleted again, untimed), ` +
        `interleaved with the same rule through the library's \`attach()\` in this process (each detached, untimed), ` +
        `and ${c.length} rounds of the C workflow: \`${clang.slice(0, -3).join(' ')} tc_psh_egress.c -o OBJ.o\` then \`tc filter add\` on a device with its clsact qdisc. ` +
        'p50 and p99 (nearest rank), and the range; the ratio is p50 against the anchor\'s median.',
      '',
      table(['path', 'p50', 'p99', 'range', 'p50 / clang + tc'], rows, ['l', 'r', 'r', 'r', 'r']),
      '',
      `Goal: through the service at most 0.25× clang + tc — ${verdict(serviceVsC <= 0.25)} (${ratio(serviceVsC)}); ` +
        `the service adds ${ms(percentile(service, 50) - percentile(library, 50))} at p50 to the library's own attach (HTTP, JSON, schema validation, the syntax pre-check).`,
      '',
    ].join('\n');
    return {
      markdown: md,
      headlines: [
        `fault created → attached through the service: p50 ${ms(percentile(service, 50))}, p99 ${ms(percentile(service, 99))}; p50 / clang + tc = ${ratio(serviceVsC)} (goal ≤ 0.25×)`,
      ],
    };
  } finally {
    await svc.stop();
    await l.down();
  }
}
