/**
 * Helpers on both engines: maps, time, randomness, checksums (against checksums computed from
 * scratch), packet bytes, redirects, clones and packet size changes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Assembler, imm } from '../../src/bpf/asm.js';
import { R0, R1, R2, R3, R4, R5, R6, R7, R8, R10 } from '../../src/bpf/opcodes.js';
import { Vm } from '../../src/vm/vm.js';
import { createMap } from '../../src/vm/maps.js';
import { setCsumDiffModel } from '../../src/vm/helpers.js';
import { csumDiffReference, ipv4Packet, ipv4HeaderValid, udpChecksumValid } from './packets.js';
import { errorOf, outMap, packet, runAsm } from './support.js';

const H = { lookup: 1, update: 2, del: 3, ktime: 5, prandom: 7, cpu: 8, storeBytes: 9, l3: 10, l4: 11, clone: 13, redirect: 23, loadBytes: 26, csumDiff: 28, changeTail: 38, adjustHead: 44, adjustTail: 65 };

/** r2 = data, r3 = data_end (tc), jump to `out` unless `len` bytes are there; r6 = ctx. */
function tcPrologue(a: Assembler, len: number): void {
  a.mov64(R6, R1).ldx(4, R2, R1, 76).ldx(4, R3, R1, 80).mov64(R4, R2).alu64('add', R4, imm(len)).jmp('jgt', R4, R3, 'out');
}

test('hash map from a program: update, lookup through the returned pointer, delete; missing keys give NULL', () => {
  const makeMaps = () => ({ flows: createMap({ type: 'hash', keySize: 4, valueSize: 8, maxEntries: 4, name: 'flows' }), out: outMap(3) });
  const r = runAsm((a) => {
    a.st(4, R10, -4, 42).st(8, R10, -16, 1000);
    a.ldMap(R1, 'flows').mov64(R2, R10).alu64('add', R2, imm(-4)).mov64(R3, R10).alu64('add', R3, imm(-16)).movImm(R4, 0).call(H.update);
    a.ldMapValue(R7, 'out').stx(8, R7, 0, R0);
    a.ldMap(R1, 'flows').mov64(R2, R10).alu64('add', R2, imm(-4)).call(H.lookup);
    a.jmp('jeq', R0, imm(0), 'missing').ldx(8, R3, R0, 0).stx(8, R7, 8, R3);
    a.ldMap(R1, 'flows').mov64(R2, R10).alu64('add', R2, imm(-4)).call(H.del);
    a.ldMap(R1, 'flows').mov64(R2, R10).alu64('add', R2, imm(-4)).call(H.lookup);
    a.stx(8, R7, 16, R0); // NULL: a number
    a.label('missing').movImm(R0, 0).exit();
  }, { programType: 'xdp', makeMaps });
  assert.deepEqual(r.out, [0n, 1000n, 0n]);
});

test('map update flags and errors come back as the kernel returns them (-EEXIST, -ENOENT, -E2BIG)', () => {
  const makeMaps = () => ({ h: createMap({ type: 'hash', keySize: 4, valueSize: 4, maxEntries: 1, name: 'h' }), out: outMap(4) });
  const r = runAsm((a) => {
    a.ldMapValue(R7, 'out').st(4, R10, -4, 1).st(4, R10, -8, 2);
    const upd = (keyOff: number, flags: number, slot: number) => {
      a.ldMap(R1, 'h').mov64(R2, R10).alu64('add', R2, imm(keyOff)).mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, flags).call(H.update).stx(8, R7, slot * 8, R0);
    };
    upd(-4, 2, 0); // BPF_EXIST on a missing key
    upd(-4, 1, 1); // BPF_NOEXIST: inserted
    upd(-4, 1, 2); // BPF_NOEXIST again
    upd(-8, 0, 3); // a second key: full
    a.movImm(R0, 0).exit();
  }, { programType: 'xdp', makeMaps });
  assert.deepEqual(r.out.map((v) => BigInt.asIntN(64, v)), [-2n, 0n, -17n, -7n]);
});

test('per-CPU array: the program sees the copy of its CPU', () => {
  const pcpu = createMap({ type: 'percpu_array', keySize: 4, valueSize: 4, maxEntries: 1, cpus: 2, name: 'pc' });
  const a = new Assembler().st(4, R10, -4, 0).ldMap(R1, 'pc').mov64(R2, R10).alu64('add', R2, imm(-4)).call(H.lookup)
    .jmp('jeq', R0, imm(0), 'x').st(4, R0, 0, 7).call(H.cpu).exit().label('x').movImm(R0, 99).exit();
  const { insns, mapRefs } = a.assemble();
  const r = new Vm(insns, { programType: 'xdp', maps: { pc: pcpu }, mapRefs, cpu: 1 }).run(packet());
  assert.equal(r.retval, 1);
  assert.deepEqual(pcpu.lookupAllCpus(0)!.map((v) => v[0]), [0, 7]);
});

test('ktime returns the run\'s clock, 64-bit; prandom is seeded and the same on both engines', () => {
  const t = runAsm((a) => a.call(H.ktime).alu64('rsh', R0, imm(32)).exit(), { programType: 'xdp' }, packet(), { ktimeNs: 5 * 2 ** 32 + 3 });
  assert.equal(t.retval, 5);
  const draw = (seed: number) => runAsm((a) => a.call(H.prandom).exit(), { programType: 'xdp', seed }).retval;
  assert.equal(draw(1), draw(1));
  assert.notEqual(draw(1), draw(2));
  const a = new Assembler().call(H.prandom).exit().assemble().insns;
  const vm = new Vm(a, { programType: 'xdp', seed: 9 });
  const seq = [vm.run(packet()).retval, vm.run(packet()).retval, vm.run(packet()).retval];
  assert.equal(new Set(seq).size, 3, 'one stream across runs');
});

test('l3_csum_replace with a 2-byte change (TTL) leaves a valid IPv4 header checksum', () => {
  for (const ttl of [1, 5, 64, 255]) {
    const r = runAsm((a) => {
      tcPrologue(a, 34);
      a.ldx(2, R7, R2, 22).st(1, R2, 22, ttl).ldx(2, R8, R2, 22);
      a.mov64(R1, R6).movImm(R2, 24).mov64(R3, R7).mov64(R4, R8).movImm(R5, 2).call(H.l3).exit();
      a.label('out').movImm(R0, -1).exit();
    }, { programType: 'sched_cls' }, ipv4Packet({ ttl: 64 }));
    assert.equal(r.retval, 0);
    assert.equal(r.packet[22], ttl);
    assert.ok(ipv4HeaderValid(r.packet), `header checksum valid after TTL ${ttl}`);
  }
});

test('l3 + l4_csum_replace (BPF_F_PSEUDO_HDR, 4 bytes) after rewriting the source address keep IPv4 and UDP checksums valid', () => {
  const r = runAsm((a) => {
    tcPrologue(a, 42);
    a.ldx(4, R7, R2, 26).st(4, R2, 26, 0x0a0012c6).ldx(4, R8, R2, 26); // 198.18.0.10
    a.mov64(R1, R6).movImm(R2, 24).mov64(R3, R7).mov64(R4, R8).movImm(R5, 4).call(H.l3);
    a.mov64(R1, R6).movImm(R2, 40).mov64(R3, R7).mov64(R4, R8).movImm(R5, 0x10 | 4).call(H.l4).exit();
    a.label('out').movImm(R0, -1).exit();
  }, { programType: 'sched_cls' }, ipv4Packet({ udp: true }));
  assert.equal(r.retval, 0);
  assert.deepEqual([...r.packet.subarray(26, 30)], [198, 18, 0, 10]);
  assert.ok(ipv4HeaderValid(r.packet));
  assert.ok(udpChecksumValid(r.packet));
});

test('l4_csum_replace with BPF_F_MARK_MANGLED_0: a zero UDP checksum stays zero; a result of zero becomes 0xffff', () => {
  const field = (initial: number, from: number, to: number, flags: number) => {
    const pkt = ipv4Packet({ udp: true });
    pkt[40] = initial & 0xff;
    pkt[41] = initial >>> 8;
    const r = runAsm((a) => {
      tcPrologue(a, 42);
      a.mov64(R1, R6).movImm(R2, 40).movImm(R3, from).movImm(R4, to).movImm(R5, flags).call(H.l4).exit();
      a.label('out').movImm(R0, -1).exit();
    }, { programType: 'sched_cls' }, pkt);
    assert.equal(r.retval, 0);
    return r.packet[40]! | (r.packet[41]! << 8);
  };
  assert.equal(field(0, 0x1111, 0x2222, 0x20 | 2), 0, 'unset checksum left alone');
  assert.equal(field(0x1234, 0, 0x1234, 0x20 | 2), 0xffff, 'computed zero marked as mangled');
  assert.equal(field(0x1234, 0, 0x1234, 2), 0, 'without the flag a zero is written');
  assert.equal(field(0, 0, 0, 0x20 | 0x40 | 2), 0xffff, 'BPF_F_MARK_ENFORCE computes even from zero');
});

test('csum helpers refuse bad flags and offsets like the kernel (-EINVAL, -EFAULT)', () => {
  const call = (id: number, off: number, flags: number) => runAsm((a) => {
    a.mov64(R6, R1).movImm(R2, off).movImm(R3, 0).movImm(R4, 0).movImm(R5, flags).call(id).exit();
  }, { programType: 'sched_cls' }, ipv4Packet({ udp: true })).retval | 0;
  assert.equal(call(H.l3, 24, 3), -22);
  assert.equal(call(H.l3, 24, 0x10 | 2), -22);
  assert.equal(call(H.l3, 1000, 2), -14);
  assert.equal(call(H.l4, 40, 0x100 | 2), -22);
  assert.equal(call(H.l4, 49, 2), -14);
});

test('csum_diff equals the one\'s-complement difference computed from scratch', () => {
  const from = [0x12345678, 0x9abcdef0];
  const to = [0x0badf00d, 0xffffffff];
  for (const seed of [0, 1, 0xffff, 0xdeadbeef]) {
    const r = runAsm((a) => {
      a.st(4, R10, -16, from[0]!).st(4, R10, -12, from[1]!).st(4, R10, -8, to[0]!).st(4, R10, -4, to[1]!);
      a.mov64(R1, R10).alu64('add', R1, imm(-16)).movImm(R2, 8).mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, 8);
      a.ldImm64(R5, seed).call(H.csumDiff).exit();
    }, { programType: 'xdp' });
    assert.equal(r.retval, csumDiffReference(from, to, seed), `seed ${seed}`);
  }
  // Sizes need not be multiples of 4 (newer kernels): a tail counts as a zero-padded word.
  const diff = (size: number) => runAsm((a) => a.st(4, R10, -8, 0x04030201).st(4, R10, -4, 0x0605).movImm(R1, 0).movImm(R2, 0)
    .mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, size).movImm(R5, 0).call(H.csumDiff).exit()).retval;
  assert.equal(diff(6), diff(8));
  assert.equal(diff(6), csumDiffReference([], [0x04030201, 0x0605], 0));
  assert.notEqual(diff(5), diff(6));
});

test('csum_diff as older kernels (6.1) have it: the 32-bit sum unfolded, sizes in words up to 512 bytes', () => {
  const before = setCsumDiffModel({ folds: false, anySize: false });
  try {
    const diff = (toSize: number, seed = 0) => runAsm((a) => a.st(4, R10, -8, 0x12345678).st(4, R10, -4, 0x0badf00d).movImm(R1, 0).movImm(R2, 0)
      .mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, toSize).movImm(R5, seed).call(H.csumDiff).exit()).retval;
    // One word, seed 0: the word itself, not 0x1234 + 0x5678.
    assert.equal(diff(4) >>> 0, 0x12345678);
    assert.equal(diff(0, 0xabcdef01) >>> 0, 0xabcdef01);
    for (const size of [2, 5, 6, 7]) assert.equal(diff(size) | 0, -22, `size ${size}`);
    const big = (fromSize: number, toSize: number) => runAsm((a) => {
      for (let off = -512; off < 0; off += 4) a.st(4, R10, off, off);
      a.mov64(R1, R10).alu64('add', R1, imm(-512)).movImm(R2, fromSize).mov64(R3, R10).alu64('add', R3, imm(-512)).movImm(R4, toSize).movImm(R5, 0);
      a.call(H.csumDiff).exit();
    }).retval;
    assert.equal(big(256, 260) | 0, -22, 'more than 512 bytes in all');
    assert.notEqual(big(256, 256) | 0, -22, 'exactly 512 bytes');
  } finally {
    setCsumDiffModel(before);
  }
  assert.deepEqual(before, { folds: true, anySize: true });
});

test('skb_store_bytes and skb_load_bytes copy between stack and packet; out of range is -EFAULT and zeroes', () => {
  const r = runAsm((a) => {
    a.mov64(R6, R1).st(4, R10, -8, 0x44332211);
    a.mov64(R1, R6).movImm(R2, 2).mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, 4).movImm(R5, 0).call(H.storeBytes);
    a.mov64(R1, R6).movImm(R2, 1).mov64(R3, R10).alu64('add', R3, imm(-16)).movImm(R4, 4).call(H.loadBytes);
    a.ldx(4, R7, R10, -16);
    a.st(4, R10, -24, -1).mov64(R1, R6).movImm(R2, 62).mov64(R3, R10).alu64('add', R3, imm(-24)).movImm(R4, 4).call(H.loadBytes);
    a.ldx(4, R8, R10, -24).alu64('lsh', R0, imm(32)).alu64('or', R0, R8);
    a.ldMapValue(R1, 'out').stx(8, R1, 0, R7).stx(8, R1, 8, R0).movImm(R0, 0).exit();
  }, { programType: 'sched_cls', makeMaps: () => ({ out: outMap(2) }) }, packet(64));
  assert.deepEqual([...r.packet.subarray(0, 7)], [0, 1, 0x11, 0x22, 0x33, 0x44, 6]);
  assert.equal(r.out[0], 0x33221101n);
  assert.equal(BigInt.asIntN(32, r.out[1]! >> 32n), -14n);
  assert.equal(r.out[1]! & 0xffffffffn, 0n);
});

test('redirect: tc returns TC_ACT_REDIRECT (7) and records the target; XDP returns XDP_REDIRECT (4); bad flags', () => {
  const tc = new Vm(new Assembler().movImm(R1, 5).movImm(R2, 1).call(H.redirect).exit().assemble().insns, { programType: 'sched_cls' }).run(packet());
  assert.equal(tc.retval, 7);
  assert.deepEqual(tc.redirect, { ifindex: 5, ingress: true });
  const xdp = new Vm(new Assembler().movImm(R1, 3).movImm(R2, 0).call(H.redirect).exit().assemble().insns, { programType: 'xdp' }).run(packet());
  assert.equal(xdp.retval, 4);
  assert.deepEqual(xdp.redirect, { ifindex: 3, ingress: false });
  assert.equal(runAsm((a) => a.movImm(R1, 3).movImm(R2, 2).call(H.redirect).exit(), { programType: 'sched_cls' }).retval, 2);
  const none = new Vm(new Assembler().movImm(R0, 0).exit().assemble().insns, { programType: 'sched_cls' }).run(packet());
  assert.equal(none.redirect, undefined);
});

test('clone_redirect records a copy of the packet as it was at the call ("sent again")', () => {
  const insns = new Assembler().mov64(R6, R1).movImm(R2, 9).movImm(R3, 0).call(H.clone).mov64(R7, R0)
    .ldx(4, R2, R6, 76).ldx(4, R3, R6, 80).mov64(R4, R2).alu64('add', R4, imm(1)).jmp('jgt', R4, R3, 'x').st(1, R2, 0, 0xee)
    .label('x').mov64(R0, R7).exit().assemble().insns;
  for (const engine of ['interpreter', 'jit'] as const) {
    const r = new Vm(insns, { programType: 'sched_cls', engine }).run(packet(20));
    assert.equal(r.retval, 0);
    assert.equal(r.clones.length, 1);
    assert.equal(r.clones[0]!.ifindex, 9);
    assert.equal(r.clones[0]!.packet[0], 0);
    assert.equal(r.packet[0], 0xee);
  }
});

test('xdp_adjust_head and xdp_adjust_tail move the packet bounds within the kernel\'s limits', () => {
  const head = (delta: number) => runAsm((a) => a.mov64(R6, R1).movImm(R2, delta).call(H.adjustHead).exit(), { programType: 'xdp' }, packet(60));
  const grown = head(-16);
  assert.equal(grown.retval, 0);
  assert.equal(grown.packet.length, 76);
  assert.deepEqual([...grown.packet.subarray(0, 17)], [...new Array(16).fill(0), 0]);
  assert.equal(head(46).packet.length, 14);
  assert.equal(head(47).retval | 0, -22);
  assert.equal(head(-216).retval, 0);
  assert.equal(head(-217).retval | 0, -22);
  const tail = (delta: number) => runAsm((a) => a.movImm(R2, delta).call(H.adjustTail).exit(), { programType: 'xdp' }, packet(60, () => 0xaa));
  assert.equal(tail(-46).packet.length, 14);
  assert.equal(tail(-47).retval | 0, -22);
  const t = tail(8);
  assert.deepEqual([...t.packet.subarray(58)], [0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(tail(3520 - 60).retval, 0);
  assert.equal(tail(3521 - 60).retval | 0, -22);
});

test('skb_change_tail trims and grows (new bytes zero), and stale packet pointers are refused afterwards', () => {
  const change = (len: number) => runAsm((a) => a.movImm(R2, len).movImm(R3, 0).call(H.changeTail).exit(), { programType: 'sched_cls' }, packet(60, () => 0x55));
  assert.equal(change(20).packet.length, 20);
  const g = change(70);
  assert.equal(g.packet.length, 70);
  assert.equal(g.packet[69], 0);
  assert.equal(change(13).retval | 0, -22);
  const err = errorOf(() => runAsm((a) => a.mov64(R6, R1).ldx(4, R7, R1, 76).movImm(R2, 30).movImm(R3, 0).call(H.changeTail).ldx(1, R0, R7, 0).exit(), { programType: 'sched_cls' }));
  assert.match(err.message, /^insn 5 \(r0 = \*\(u8 \*\)\(r7 \+ 0\)\): read through r7, which holds a packet pointer made invalid by a helper/);
});

test('a growing packet does not leak the previous run\'s bytes', () => {
  const insns = new Assembler().movImm(R2, 100).movImm(R3, 0).call(H.changeTail).exit().assemble().insns;
  for (const engine of ['interpreter', 'jit'] as const) {
    const vm = new Vm(insns, { programType: 'sched_cls', engine });
    vm.run(packet(90, () => 0x77));
    const second = vm.run(packet(20, () => 0x11));
    assert.deepEqual([...second.packet.subarray(20)], new Array(80).fill(0));
  }
});

test('map lookup with a key on the stack (inline in the JIT): hits, misses past max_entries, and the helper\'s errors for bad keys', () => {
  const makeMaps = () => ({ arr: createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 2, name: 'arr' }), out: outMap(2) });
  const r = runAsm((a) => {
    a.ldMapValue(R7, 'out');
    a.st(4, R10, -4, 1).ldMap(R1, 'arr').mov64(R2, R10).alu64('add', R2, imm(-4)).call(H.lookup);
    a.jmp('jeq', R0, imm(0), 'missing').st(8, R0, 0, 77).ldx(8, R3, R0, 0).stx(8, R7, 0, R3);
    a.st(4, R10, -4, 2).ldMap(R1, 'arr').mov64(R2, R10).alu64('add', R2, imm(-4)).call(H.lookup);
    a.stx(8, R7, 8, R0); // index 2 of 2 entries: NULL, a number
    a.label('missing').movImm(R0, 0).exit();
  }, { programType: 'xdp', makeMaps });
  assert.deepEqual(r.out, [77n, 0n]);

  const spilled = errorOf(() => runAsm((a) => {
    a.stx(8, R10, -8, R1).ldMap(R1, 'arr').mov64(R2, R10).alu64('add', R2, imm(-8)).call(H.lookup).movImm(R0, 0).exit();
  }, { programType: 'xdp', makeMaps }));
  assert.match(spilled.message, /pointer spilled to the stack/);

  const pastStack = errorOf(() => runAsm((a) => {
    a.st(2, R10, -2, 0).ldMap(R1, 'arr').mov64(R2, R10).alu64('add', R2, imm(-2)).call(H.lookup).movImm(R0, 0).exit();
  }, { programType: 'xdp', makeMaps }));
  assert.match(pastStack.message, /out of bounds|outside|past|beyond/i);
});
