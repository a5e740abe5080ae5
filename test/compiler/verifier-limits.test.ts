/**
 * What loading says when the kernel's verifier refuses a program, checked against the kernel:
 * a program beyond the verifier's limits (1,000,000 processed instructions, 8,192 pending
 * jumps) is named as such, with about how many rules fit and no log file; a refusal that is
 * netmangle's bug keeps the log where only root reads it; a signal during a long verification
 * (EAGAIN) does not fail the load.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname } from 'node:path';
import { Assembler, imm, R0, R1, R8 } from '../../src/bpf/index.js';
import { createMap, loadProgram, VerifierError } from '../../src/kernel/index.js';
import { loadCompiled } from '../../src/live/index.js';
import { NetmangleError } from '../../src/errors.js';
import { kernelTest } from '../helpers/kernel.js';
import { compileRules, rule } from './harness.js';

const setRules = (n: number) => Array.from({ length: n }, (_, i) => rule(`tcp.dstport == ${i + 1} => set ip.ttl = 1`, 'egress', { name: `r${i}` }));

const verifierDirs = (): string[] => readdirSync(tmpdir()).filter((n) => n.startsWith('netmangle-verifier-'));

kernelTest('1000 set rules at the instruction limit: named as the limit, with how many fit (they do), no log kept, exit 2', () => {
  const before = new Set(verifierDirs());
  const compiled = compileRules('egress', setRules(1000));
  let caught: unknown;
  try {
    loadCompiled(compiled).close();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof NetmangleError, String(caught));
  const e = caught as NetmangleError;
  assert.equal(e.exitCode, 2);
  assert.match(e.message, /^1000 rules at egress of x make a program larger than the kernel's verifier checks: it would have to check more than 1,000,000 instructions \(verifier: "BPF program is too large\. Processed 1000001 insn"\)$/);
  assert.doesNotMatch(`${e.message} ${e.hint}`, /upgrade|netmangle bug|\.log/);
  const fit = Number(/^about (\d+) rules like these fit in one program: split the rules/.exec(e.hint ?? '')?.[1]);
  assert.ok(fit >= 500 && fit < 1000, `estimate ${fit}`);
  assert.deepEqual(verifierDirs().filter((d) => !before.has(d)), [], 'no verifier log kept for a limit');
  // The estimate errs low: that many rules load.
  loadCompiled(compileRules('egress', setRules(fit))).close();
}, { timeout: 300_000 });

kernelTest('more than 8192 pending jumps: VerifierError.limit says so', () => {
  // r0 unknown (a packet byte), then 9000 tests of it, each a branch the verifier must keep.
  const a = new Assembler().ldx(4, R0, R1, 0);
  for (let i = 0; i < 9000; i++) a.jmp('jeq', R0, imm(i), `l${i}`).alu64('add', R1, imm(0)).label(`l${i}`);
  a.movImm(R0, 0).exit();
  assert.throws(() => loadProgram({ type: 'sched_cls', insns: a.assemble().insns }), (err: unknown) => {
    assert.ok(err instanceof VerifierError);
    assert.equal(err.limit?.kind, 'jumps');
    assert.match(err.limit.line, /^The sequence of \d+ jumps is too complex/);
    assert.match(err.message, /gave up .* at its limit/);
    return true;
  });
});

kernelTest('a refusal that is netmangle\'s bug keeps the log in a netmangle-verifier-* directory of mode 0700, the file 0600', () => {
  const base = compileRules('egress', [rule('ip => pass', 'egress')]);
  const bad = new Assembler().mov64(R0, R8).exit().assemble();
  let caught: unknown;
  try {
    loadCompiled({ ...base, insns: bad.insns, mapRefs: bad.mapRefs }).close();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof NetmangleError);
  const e = caught as NetmangleError;
  assert.match(e.message, /verifier rejected the program for "ip => pass" \(a netmangle bug\)/);
  const file = /the whole verifier log is in (\S+);/.exec(e.hint ?? '')?.[1];
  assert.ok(file, e.hint);
  try {
    assert.match(file, /\/netmangle-verifier-[^/]+\/verifier\.log$/);
    assert.equal(statSync(dirname(file)).mode & 0o777, 0o700);
    assert.equal(statSync(file).mode & 0o777, 0o600);
  } finally {
    rmSync(dirname(file), { recursive: true, force: true });
  }
});

kernelTest('a signal during a long verification (EAGAIN) does not fail the load: it is loaded again', async () => {
  const compiled = compileRules('egress', setRules(600));
  const maps = Object.fromEntries(compiled.maps.map((s) => [s.name, createMap(s)]));
  let signals = 0;
  const onSignal = (): void => { signals++; };
  process.on('SIGUSR2', onSignal);
  try {
    // The verification takes seconds; the signal comes 0.3 s into it.
    const child = spawn('sh', ['-c', `sleep 0.3; kill -USR2 ${process.pid}`], { stdio: 'ignore' });
    loadProgram({ type: compiled.kind, insns: compiled.insns, maps, mapRefs: compiled.mapRefs, name: 'nm_signal' }).close();
    await new Promise((resolve) => child.on('exit', resolve));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(signals, 1, 'the signal was delivered');
  } finally {
    process.off('SIGUSR2', onSignal);
    for (const m of Object.values(maps)) m.close();
  }
}, { timeout: 120_000 });
