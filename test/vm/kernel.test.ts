/**
 * The kernel is the oracle: the same programs through BPF_PROG_TEST_RUN and through both VM
 * engines give the same return value and the same packet. Random ALU/JMP/stack programs run
 * as XDP; helper programs run as their own types. What differs between the kernels compared
 * with is asked of the feature probe, never the version: random programs use the cpu v4
 * instructions only where the verifier takes them (isa_v4), and the VM's bpf_csum_diff returns
 * the sum folded or not and checks sizes as this kernel's does (csum_diff_folded, csum_diff_any_size).
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { kernelProbe, kernelTest, kernelUnavailable } from '../helpers/kernel.js';
import { loadProgram, testRun } from '../../src/kernel/program.js';
import type { Insn } from '../../src/bpf/insn.js';
import { Assembler, imm } from '../../src/bpf/asm.js';
import { R0, R1, R2, R3, R4, R5, R6, R7, R8, R10 } from '../../src/bpf/opcodes.js';
import { Vm } from '../../src/vm/vm.js';
import { setCsumDiffModel } from '../../src/vm/helpers.js';
import { randomProgram } from './gen.js';
import { ipv4Packet } from './packets.js';
import { packet } from './support.js';

type Type = 'xdp' | 'sched_cls';

function kernelRun(insns: readonly Insn[], type: Type, data: Uint8Array): { retval: number; data: Uint8Array } {
  const prog = loadProgram({ type, insns, name: 'vm_diff' });
  try {
    const r = testRun(prog, { data });
    return { retval: r.retval, data: r.data };
  } finally {
    prog.close();
  }
}

function vmRuns(insns: readonly Insn[], type: Type, data: Uint8Array): { retval: number; data: Uint8Array }[] {
  return (['interpreter', 'jit'] as const).map((engine) => {
    const r = new Vm(insns, { programType: type, engine }).run(data);
    return { retval: r.retval | 0, data: r.copyPacket() };
  });
}

// Probed when the module loads, so that the test's name says which instruction set it used;
// without a kernel the tests fail or skip (kernelTest) and the name says v4, the generator's default.
const v4 = kernelUnavailable() ? true : kernelProbe().features.isa_v4;
const isaName = v4 ? 'cpu v4 instructions included' : 'no cpu v4 instructions: the probe finds this verifier refuses them';

kernelTest(`random programs: the kernel and both VM engines return the same r0 (1,000 programs, ${isaName})`, () => {
  assert.equal(v4, kernelProbe().features.isa_v4);
  const data = packet(64);
  let cases = 0;
  fc.assert(
    fc.property(randomProgram(40, { v4 }), (p) => {
      const k = kernelRun(p.insns, 'xdp', data);
      for (const v of vmRuns(p.insns, 'xdp', data)) assert.equal(v.retval, k.retval);
      cases++;
    }),
    { numRuns: 1000 },
  );
  assert.equal(cases, 1000);
}, { timeout: 600_000 });

/** Helper programs whose packet and retval must match the kernel's. */
const helperCases: { name: string; type: Type; data: Uint8Array; build: (a: Assembler) => void }[] = [];

for (const [from, to, flags] of [[0x1111, 0x2222, 2], [0, 0x1234, 0x20 | 2], [0, 0, 0x20 | 0x40 | 2], [0xdeadbeef, 0x01020304, 4], [0, 0xabcd1234, 0], [0, 5, 0x10 | 4], [7, 8, 3], [0, 0, 0x100]]) {
  for (const [id, off] of [[10, 24], [11, 40], [11, 41], [10, 200]]) {
    helperCases.push({
      name: `${id === 10 ? 'l3' : 'l4'}_csum_replace(off ${off}, from ${from}, to ${to}, flags 0x${flags!.toString(16)})`,
      type: 'sched_cls',
      data: ipv4Packet({ udp: true }),
      build: (a) => {
        a.mov64(R6, R1).movImm(R2, off!).ldImm64(R3, from!).ldImm64(R4, to!).movImm(R5, flags!).call(id!).exit();
      },
    });
  }
}
for (const initial of [0, 0x1234, 0xffff]) {
  helperCases.push({
    name: `l4_csum_replace with BPF_F_MARK_MANGLED_0 on checksum field 0x${initial.toString(16)}`,
    type: 'sched_cls',
    data: (() => { const p = ipv4Packet({ udp: true }); p[40] = initial & 0xff; p[41] = initial >> 8; return p; })(),
    build: (a) => a.mov64(R6, R1).movImm(R2, 40).movImm(R3, 0).movImm(R4, 0x1234).movImm(R5, 0x20 | 2).call(11).exit(),
  });
}
for (const [fromSize, toSize, seed] of [[8, 8, 0], [8, 8, 0xdeadbeef], [0, 8, 1], [8, 0, 0xffff], [4, 12, 0], [0, 0, 77], [6, 8, 0], [8, 0, 0], [3, 5, 9], [7, 0, 1], [0, 15, 0]]) {
  helperCases.push({
    name: `csum_diff(from ${fromSize} bytes, to ${toSize} bytes, seed ${seed})`,
    type: 'xdp',
    data: packet(64),
    build: (a) => {
      a.st(4, R10, -32, 0x12345678).st(4, R10, -28, 0x9abcdef0).st(4, R10, -24, -1).st(4, R10, -20, 0);
      a.st(4, R10, -16, 0x0badf00d).st(4, R10, -12, -1).st(4, R10, -8, 0x01000000).st(4, R10, -4, 0);
      a.mov64(R1, R10).alu64('add', R1, imm(-32)).movImm(R2, fromSize!).mov64(R3, R10).alu64('add', R3, imm(-16)).movImm(R4, toSize!).ldImm64(R5, seed!);
      a.call(28).exit();
    },
  });
}
helperCases.push({
  name: 'csum_diff over the whole 512-byte stack, twice (sizes beyond the old 512-byte sum limit)',
  type: 'xdp',
  data: packet(64),
  build: (a) => {
    for (let off = -512; off < 0; off += 8) a.ldImm64(R1, BigInt(off) * 0x0101010101010101n + 0x1234567n).stx(8, R10, off, R1);
    a.mov64(R1, R10).alu64('add', R1, imm(-512)).movImm(R2, 512).mov64(R3, R10).alu64('add', R3, imm(-500)).movImm(R4, 500).movImm(R5, 3).call(28).exit();
  },
});
for (const len of [14, 20, 60, 61, 100, 13]) {
  helperCases.push({ name: `skb_change_tail(${len})`, type: 'sched_cls', data: packet(60, () => 0x5a), build: (a) => a.movImm(R2, len).movImm(R3, 0).call(38).exit() });
}
for (const delta of [-16, -216, -217, 46, 47, 0]) {
  helperCases.push({ name: `xdp_adjust_head(${delta})`, type: 'xdp', data: packet(60, () => 0xa5), build: (a) => a.movImm(R2, delta).call(44).exit() });
}
for (const delta of [8, -46, -47, 3460, 3461]) {
  helperCases.push({ name: `xdp_adjust_tail(${delta})`, type: 'xdp', data: packet(60, () => 0xa5), build: (a) => a.movImm(R2, delta).call(65).exit() });
}
helperCases.push({
  name: 'skb_store_bytes / skb_load_bytes, in and out of range',
  type: 'sched_cls',
  data: packet(64),
  build: (a) => {
    a.mov64(R6, R1).st(4, R10, -8, 0x44332211);
    a.mov64(R1, R6).movImm(R2, 2).mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, 4).movImm(R5, 0).call(9).mov64(R7, R0);
    a.mov64(R1, R6).movImm(R2, 62).mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, 4).movImm(R5, 0).call(9).alu64('lsh', R7, imm(8)).alu64('xor', R7, R0);
    a.st(4, R10, -16, -1).mov64(R1, R6).movImm(R2, 62).mov64(R3, R10).alu64('add', R3, imm(-16)).movImm(R4, 4).call(26);
    a.ldx(4, R8, R10, -16).alu64('xor', R7, R8).alu64('lsh', R7, imm(8)).alu64('xor', R7, R0).mov64(R0, R7).exit();
  },
});
helperCases.push({
  name: 'redirect with good and bad flags (tc)',
  type: 'sched_cls',
  data: packet(64),
  build: (a) => a.movImm(R1, 5).movImm(R2, 1).call(23).mov64(R6, R0).movImm(R1, 5).movImm(R2, 2).call(23).alu64('lsh', R6, imm(8)).alu64('or', R0, R6).exit(),
});
helperCases.push({
  name: 'context fields as test-run presents them (sched_cls: len, pkt_type, protocol, ifindex, ingress_ifindex)',
  type: 'sched_cls',
  data: ipv4Packet({ udp: true }),
  build: (a) => {
    a.ldx(4, R2, R1, 0).ldx(4, R3, R1, 4).alu64('lsh', R3, imm(8)).alu64('xor', R2, R3).ldx(4, R3, R1, 16).alu64('lsh', R3, imm(12)).alu64('xor', R2, R3);
    a.ldx(4, R3, R1, 40).alu64('lsh', R3, imm(28)).alu64('xor', R2, R3).ldx(4, R3, R1, 36).alu64('lsh', R3, imm(24)).alu64('xor', R2, R3).mov64(R0, R2).exit();
  },
});
helperCases.push({
  name: 'context fields as test-run presents them (xdp: ingress_ifindex, rx_queue_index, length)',
  type: 'xdp',
  data: packet(50),
  build: (a) => a.ldx(4, R2, R1, 12).ldx(4, R3, R1, 16).alu64('lsh', R3, imm(8)).alu64('xor', R2, R3).ldx(4, R3, R1, 0).ldx(4, R4, R1, 4).alu64('sub', R4, R3).alu64('lsh', R4, imm(16)).alu64('xor', R2, R4).mov64(R0, R2).exit(),
});

kernelTest('helpers: checksums, packet bytes, size changes, redirects and context give the kernel\'s retval and packet', () => {
  const failures: string[] = [];
  // The VM is this kernel's twin: its bpf_csum_diff folds the sum and takes any sizes, or not,
  // as the probe found.
  const { csum_diff_folded: folds, csum_diff_any_size: anySize } = kernelProbe().features;
  const before = setCsumDiffModel({ folds, anySize });
  try {
    runHelperCases(failures);
  } finally {
    setCsumDiffModel(before);
  }
  assert.deepEqual(failures, [], `bpf_csum_diff modelled ${folds ? 'folded' : 'unfolded'}, ${anySize ? 'any sizes' : 'sizes in words up to 512 bytes'}`);
});

function runHelperCases(failures: string[]): void {
  for (const c of helperCases) {
    const a = new Assembler();
    c.build(a);
    const { insns } = a.assemble();
    let k: { retval: number; data: Uint8Array };
    try {
      k = kernelRun(insns, c.type, c.data);
    } catch (err) {
      failures.push(`${c.name}: the kernel refused it: ${(err as Error).message}`);
      continue;
    }
    for (const [i, v] of vmRuns(insns, c.type, c.data).entries()) {
      const engine = i === 0 ? 'interpreter' : 'jit';
      if (v.retval !== k.retval) failures.push(`${c.name} [${engine}]: retval ${v.retval}, kernel ${k.retval}`);
      else if (Buffer.compare(Buffer.from(v.data), Buffer.from(k.data)) !== 0) {
        failures.push(`${c.name} [${engine}]: packet differs (length ${v.data.length} vs kernel ${k.data.length}; first difference at ${v.data.findIndex((b, j) => b !== k.data[j])})`);
      }
    }
  }
}
