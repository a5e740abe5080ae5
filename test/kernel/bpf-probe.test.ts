import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { release } from 'node:os';
import { test } from 'node:test';
import { formatProbe } from '../../src/cli/commands/probe.js';
import { Assembler } from '../../src/bpf/asm.js';
import { R0 } from '../../src/bpf/opcodes.js';
import { BpfError, loadProgram, probeFeatures, queryProgs } from '../../src/kernel/index.js';
import { kernelTest } from '../helpers/kernel.js';

const FEATURE_KEYS = ['bpf_syscall', 'jit', 'btf', 'prog_xdp', 'prog_sched_cls', 'xdp_link', 'tcx', 'test_run', 'ringbuf', 'lru_hash', 'isa_v4', 'csum_diff_folded', 'csum_diff_any_size'];

// What every kernel netmangle runs on has (Linux 5.9 and later: see docs/kernels.md); tcx and the
// cpu v4 instructions (6.6) and bpf_csum_diff's folded result are where the kernels it supports
// differ (bpf_csum_diff's folded result and sizes), and the probe's answers for the first two are checked against a different syscall or
// instruction than the one it uses (a query, not a link; a byte swap, not a signed division).
const VARIES = ['tcx', 'isa_v4', 'csum_diff_folded', 'csum_diff_any_size'];
const REQUIRED = FEATURE_KEYS.filter((k) => !VARIES.includes(k));

/** Whether the verifier takes `bswap64 r0` (BPF_ALU64 | BPF_END: cpu v4, like the probe's sdiv). */
function bswapLoads(): boolean {
  try {
    loadProgram({ type: 'xdp', insns: new Assembler().movImm(R0, 2).bswap(R0, 64).movImm(R0, 2).exit().assemble().insns, name: 'nm_test_bswap' }).close();
    return true;
  } catch (err) {
    if (err instanceof BpfError && err.code === 'EINVAL') return false;
    throw err;
  }
}

/** Whether BPF_PROG_QUERY knows the tcx ingress attach type (a kernel without tcx: EINVAL). */
function tcxQueryWorks(): boolean {
  try {
    queryProgs(1, 'tcx_ingress');
    return true;
  } catch (err) {
    if (err instanceof BpfError && err.code === 'EINVAL') return false;
    throw err;
  }
}

kernelTest('probeFeatures finds every feature on this kernel and leaves the thread in its namespace', () => {
  const netnsBefore = readlinkSync('/proc/thread-self/ns/net');
  const result = probeFeatures();
  assert.equal(readlinkSync('/proc/thread-self/ns/net'), netnsBefore);
  assert.equal(result.kernel, release());
  assert.deepEqual(Object.keys(result.features), FEATURE_KEYS);
  for (const name of REQUIRED) assert.equal(result.features[name as keyof typeof result.features], true, `${name} should be available`);
  assert.equal(result.features.tcx, tcxQueryWorks(), 'the tcx probe agrees with BPF_PROG_QUERY on tcx_ingress');
  assert.equal(result.features.isa_v4, bswapLoads(), 'the cpu v4 probe (sdiv) agrees with loading a bswap');
  const tc = result.features.tcx ? 'tcx' : 'netlink';
  assert.deepEqual(result.attach, { xdp: 'link', ingress: tc, egress: tc });
});

kernelTest('`netmangle probe --json` prints exactly the documented shape', () => {
  const expected = probeFeatures();
  const run = spawnSync(process.execPath, ['bin/netmangle', 'probe', '--json'], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const parsed = JSON.parse(run.stdout) as Record<string, unknown>;
  assert.deepEqual(Object.keys(parsed), ['kernel', 'features', 'attach']);
  assert.equal(typeof parsed.kernel, 'string');
  assert.deepEqual(Object.keys(parsed.features as object), FEATURE_KEYS);
  assert.deepEqual(parsed.features, expected.features);
  assert.deepEqual(parsed.attach, expected.attach);
  const human = spawnSync(process.execPath, ['bin/netmangle', 'probe'], { encoding: 'utf8' });
  assert.equal(human.status, 0, human.stderr);
  assert.match(human.stdout, new RegExp(`^tcx\\s+${expected.features.tcx ? 'yes' : 'no'}$`, 'm'));
});

test('`netmangle probe` without root says so in one line and exits 1', () => {
  // As root, drop to nobody for the child; otherwise we already are unprivileged.
  const cli = [process.execPath, 'bin/netmangle', 'probe', '--json'];
  const run = process.getuid?.() === 0
    ? spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', ...cli], { encoding: 'utf8' })
    : spawnSync(cli[0]!, cli.slice(1), { encoding: 'utf8' });
  assert.equal(run.status, 1, run.stderr);
  assert.equal(run.stdout, '');
  assert.equal(run.stderr.trim().split('\n').length, 1);
  assert.match(run.stderr, /needs root/);
});

test('the human probe table lists every feature and the attach choices', () => {
  const text = formatProbe({
    kernel: '6.1.0',
    features: {
      bpf_syscall: true, jit: true, btf: true, prog_xdp: true, prog_sched_cls: true,
      xdp_link: true, tcx: false, test_run: true, ringbuf: true, lru_hash: true,
      isa_v4: false, csum_diff_folded: false, csum_diff_any_size: false,
    },
    attach: { xdp: 'link', ingress: 'netlink', egress: 'netlink' },
  });
  assert.match(text, /^kernel\s+6\.1\.0$/m);
  assert.match(text, /^tcx\s+no$/m);
  assert.match(text, /^attach ingress\s+netlink$/m);
  assert.equal(text.split('\n').length, 1 + FEATURE_KEYS.length + 3);
});
