import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Assembler, encode, imm, R0, R1, R2, R3, R4 } from '../../src/bpf/index.js';
import { NetmangleError } from '../../src/errors.js';
import {
  BpfError, Program, VerifierError, createMap, createXdpLink, enableStats, listPrograms, loadProgram, programFdById, programInfo, testRun,
} from '../../src/kernel/index.js';
import { kernelTest } from '../helpers/kernel.js';
import { TC_ACT_OK, XDP_PASS, countingProgram, u32Key } from './bpf-fixtures.js';

const returnOnly = (v: number) => new Assembler().movImm(R0, v).exit().assemble().insns;

kernelTest('an XDP program loads, is listed with its name and type, and test-runs to XDP_PASS', () => {
  using prog = loadProgram({ type: 'xdp', insns: returnOnly(XDP_PASS), name: 'nm-test-xdp' });
  assert.equal(prog.type, 'xdp');
  assert.equal(prog.name, 'nm_test_xdp', 'names are sanitized to [A-Za-z0-9_.]');
  assert.ok(prog.id > 0);
  const info = programInfo(prog);
  assert.equal(info.id, prog.id);
  assert.equal(info.type, 'xdp');
  assert.equal(info.xlatedInsnCount, 2);
  assert.match(info.tag, /^[0-9a-f]{16}$/);
  assert.ok(listPrograms().some((p) => p.id === prog.id && p.name === 'nm_test_xdp'));
  assert.equal(programInfo(prog.id).tag, info.tag, 'info by id and by fd agree');
  const run = testRun(prog, { data: new Uint8Array(64) });
  assert.equal(run.retval, XDP_PASS);
  assert.equal(run.data.length, 64);
});

kernelTest('a sched_cls program loads and test-runs to its return value', () => {
  using prog = loadProgram({ type: 'sched_cls', insns: returnOnly(TC_ACT_OK), name: 'nm_test_tc' });
  assert.equal(prog.type, 'sched_cls');
  assert.equal(testRun(prog, { data: new Uint8Array(60) }).retval, TC_ACT_OK);
  using shot = loadProgram({ type: 'sched_cls', insns: returnOnly(-1) });
  assert.equal(testRun(shot, { data: new Uint8Array(60) }).retval, -1, 'retval is signed');
});

kernelTest('test_run returns the packet a program rewrote', () => {
  // if (data + 1 <= data_end) data[0] = 0xab; return XDP_PASS
  const a = new Assembler()
    .ldx(4, R2, R1, 0)
    .ldx(4, R3, R1, 4)
    .mov64(R4, R2)
    .alu64('add', R4, imm(1))
    .jmp('jgt', R4, R3, 'out')
    .st(1, R2, 0, 0xab)
    .label('out')
    .movImm(R0, XDP_PASS)
    .exit();
  using prog = loadProgram({ type: 'xdp', insns: encode(a.assemble().insns), name: 'nm_rewrite' });
  const input = new Uint8Array(64).map((_, i) => i);
  const run = testRun(prog, { data: input, repeat: 3 });
  assert.equal(run.retval, XDP_PASS);
  assert.equal(run.data[0], 0xab);
  assert.deepEqual(run.data.subarray(1), input.subarray(1));
  assert.equal(input[0], 0, 'the input buffer is not modified');
});

kernelTest('a program the verifier refuses throws VerifierError with the log', () => {
  // exit without setting r0
  const bad = new Assembler().exit().assemble().insns;
  let caught: unknown;
  try {
    loadProgram({ type: 'xdp', insns: bad, name: 'nm_bad' });
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof VerifierError, `expected VerifierError, got ${String(caught)}`);
  assert.ok(caught instanceof BpfError);
  assert.ok(caught instanceof NetmangleError);
  assert.match(caught.log, /R0 !read_ok/);
  assert.match(caught.message, /R0 !read_ok/, 'the message shows the last lines');
  assert.equal(caught.code, 'EACCES');
  assert.equal(caught.truncated, false);
});

kernelTest('a verifier log larger than the first 64 KiB buffer is returned whole', () => {
  // 4000 instructions logged one line each at log level 2, then an uninitialized read.
  const a = new Assembler().movImm(R0, 0);
  for (let i = 0; i < 4000; i++) a.alu64('add', R0, imm(1));
  a.mov64(R0, R4).exit();
  let caught: unknown;
  try {
    loadProgram({ type: 'xdp', insns: a.assemble().insns, logLevel: 2 });
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof VerifierError);
  assert.ok(caught.log.length > 64 * 1024, `log is ${caught.log.length} bytes`);
  assert.match(caught.log, /R4 !read_ok/);
  // 6.1 prints the context register as ctx(off=0,imm=0), 6.18 as ctx().
  assert.match(caught.log, /^0: R1=ctx\([^)]*\) R10=fp0/m, 'the log starts at its beginning');
});

kernelTest('logLevel 1 keeps the verifier log of a program that loads', () => {
  using prog = loadProgram({ type: 'xdp', insns: returnOnly(XDP_PASS), logLevel: 1 });
  assert.match(prog.verifierLog ?? '', /processed 2 insns/);
});

kernelTest('map references are filled in with map fds, and a per-CPU counter counts test runs', () => {
  using counts = createMap({ type: 'percpu_array', keySize: 4, valueSize: 8, maxEntries: 1, name: 'counts' });
  const { insns, mapRefs } = countingProgram(XDP_PASS, true);
  using prog = loadProgram({ type: 'xdp', insns, mapRefs, maps: { counts }, name: 'nm_count' });
  assert.deepEqual(programInfo(prog).mapIds, [counts.id]);
  const run = testRun(prog, { data: new Uint8Array(64), repeat: 7 });
  assert.equal(run.retval, XDP_PASS);
  const perCpu = counts.perCpuValues(u32Key(0))!;
  assert.equal(perCpu.length, counts.cpus);
  const total = perCpu.reduce((sum, v) => sum + v.readBigUInt64LE(0), 0n);
  assert.equal(total, 7n);
});

kernelTest('a map reference without its map is refused before the kernel sees it', () => {
  const { insns, mapRefs } = countingProgram(XDP_PASS);
  assert.throws(() => loadProgram({ type: 'xdp', insns, mapRefs, maps: {} }), (err: unknown) =>
    err instanceof NetmangleError && /map 'counts'/.test(err.message));
});

kernelTest('a program opened again by id is the same program', () => {
  using prog = loadProgram({ type: 'xdp', insns: returnOnly(XDP_PASS), name: 'nm_byid' });
  using again = Program.fromFd(programFdById(prog.id));
  assert.equal(again.id, prog.id);
  assert.equal(again.name, 'nm_byid');
  assert.notEqual(again.fd, prog.fd);
});

kernelTest('failures name the operation, the object and the errno, with a hint', () => {
  using prog = loadProgram({ type: 'xdp', insns: returnOnly(XDP_PASS), name: 'nm_err' });
  assert.throws(() => createXdpLink(prog, 0x7ffffff0), (err: unknown) => {
    assert.ok(err instanceof BpfError);
    assert.match(err.message, /^attach XDP program 'nm_err' \(id \d+\) to ifindex 2147483632: EINVAL/);
    assert.match(err.hint ?? '', /no interface with index/);
    return true;
  });
  assert.throws(() => createMap({ type: 'hash', keySize: 4, valueSize: 4, maxEntries: 0, name: 'nm_empty' }), (err: unknown) => {
    assert.ok(err instanceof BpfError);
    assert.match(err.message, /create hash map 'nm_empty' .*: EINVAL/);
    return true;
  });
  prog.close();
  assert.throws(() => testRun(prog, { data: new Uint8Array(64) }), /already closed/);
});

kernelTest('run counts and run time are reported while BPF statistics are on', () => {
  using prog = loadProgram({ type: 'xdp', insns: returnOnly(XDP_PASS), name: 'nm_stats' });
  {
    using stats = enableStats();
    assert.ok(stats.fd >= 0);
    testRun(prog, { data: new Uint8Array(64), repeat: 10 });
    const info = prog.info();
    assert.equal(info.runCount, 10n);
    assert.ok(info.runTimeNs > 0n);
  }
  // Closing the stats fd turns counting off again, unless the sysctl keeps it on for everyone.
  if (readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '0') {
    testRun(prog, { data: new Uint8Array(64), repeat: 5 });
    assert.equal(prog.info().runCount, 10n, 'nothing is counted once statistics are off again');
  }
});
