/**
 * Memory: packet, stack, context and map values, every access checked; a bad access stops
 * the run with an error that names the instruction, on both engines alike.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Assembler, imm } from '../../src/bpf/asm.js';
import { R0, R1, R2, R3, R4, R6, R7, R10 } from '../../src/bpf/opcodes.js';
import { Vm } from '../../src/vm/vm.js';
import { VmError } from '../../src/vm/errors.js';
import { createMap } from '../../src/vm/maps.js';
import { errorOf, outMap, packet, runAsm } from './support.js';

test('a packet read past data_end names the instruction, the offset and the end', () => {
  const err = errorOf(() => runAsm((a) => a.ldx(4, R2, R1, 0).ldx(4, R0, R2, 60).exit(), { programType: 'xdp' }, packet(54)));
  assert.ok(err instanceof VmError);
  assert.equal(err.message, 'insn 1 (r0 = *(u32 *)(r2 + 60)): read of 4 bytes at packet offset 60 beyond end 54');
  assert.equal(err.slot, 1);
});

test('instruction numbers in errors count slots, as the verifier does (a 64-bit immediate takes two)', () => {
  const err = errorOf(() => runAsm((a) => a.ldImm64(R3, 5n).ldx(4, R2, R1, 0).ldx(1, R0, R2, -1).exit(), { programType: 'xdp' }));
  assert.match(err.message, /^insn 3 \(r0 = \*\(u8 \*\)\(r2 - 1\)\): read of 1 bytes at packet offset -1, before the start of the packet$/);
});

test('a tc program reads data/data_end at __sk_buff offsets 76/80 and a packet write changes the output', () => {
  const r = runAsm((a) => {
    a.ldx(4, R2, R1, 76).ldx(4, R3, R1, 80).mov64(R4, R2).alu64('add', R4, imm(23)).jmp('jgt', R4, R3, 'out');
    a.st(1, R2, 22, 7); // IPv4 TTL in a 14-byte Ethernet + IPv4 packet
    a.label('out').movImm(R0, 0).exit();
  }, { programType: 'sched_cls' }, packet(60));
  assert.equal(r.packet[22], 7);
  assert.equal(r.packet[21], 21);
  assert.equal(r.packet.length, 60);
});

test('stack: fp-relative reads and writes, out-of-stack access names fp offset', () => {
  const r = runAsm((a) => a.st(8, R10, -8, -2).ldx(4, R0, R10, -4).exit());
  assert.equal(r.retval, 0xffffffff);
  const err = errorOf(() => runAsm((a) => a.ldx(8, R0, R10, -520).exit()));
  assert.match(err.message, /^insn 0 \(r0 = \*\(u64 \*\)\(r10 - 520\)\): read of 8 bytes at stack offset fp-520, outside the 512-byte stack$/);
  const above = errorOf(() => runAsm((a) => a.st(4, R10, 0, 1).movImm(R0, 0).exit()));
  assert.match(above.message, /write of 4 bytes at stack offset fp\+0, outside the 512-byte stack/);
});

test('stack starts zeroed on every run, so runs do not leak into each other', () => {
  const a = new Assembler();
  a.ldx(8, R0, R10, -8).st(8, R10, -8, 77).exit();
  for (const engine of ['interpreter', 'jit'] as const) {
    const vm = new Vm(a.assemble().insns, { programType: 'xdp', engine });
    assert.equal(vm.run(packet()).retval, 0);
    assert.equal(vm.run(packet()).retval, 0);
  }
});

test('a pointer spilled to the stack comes back as a pointer; a partial read of it is refused', () => {
  const r = runAsm((a) => a.ldx(4, R2, R1, 0).stx(8, R10, -16, R2).ldx(8, R3, R10, -16).ldx(1, R0, R3, 5).exit(), { programType: 'xdp' }, packet(20));
  assert.equal(r.retval, 5);
  const err = errorOf(() => runAsm((a) => a.ldx(4, R2, R1, 0).stx(8, R10, -16, R2).ldx(4, R0, R10, -16).exit(), { programType: 'xdp' }));
  assert.match(err.message, /^insn 2 .*reads 4 bytes of a pointer spilled to the stack at fp-16/);
});

test('reading an uninitialized register is an error naming it', () => {
  const err = errorOf(() => runAsm((a) => a.mov64(R0, R7).exit()));
  assert.equal(err.message, 'insn 0 (r0 = r7): reads r7, which holds nothing (never written, or clobbered by a call)');
  const afterCall = errorOf(() => runAsm((a) => a.call(7).mov64(R0, R1).exit()));
  assert.match(afterCall.message, /^insn 1 \(r0 = r1\): reads r1/);
});

test('context: unknown offsets, narrow pointer loads and writes to read-only fields are refused', () => {
  assert.match(errorOf(() => runAsm((a) => a.ldx(4, R0, R1, 24).exit(), { programType: 'xdp' })).message, /offset 24 of xdp_md: not a field/);
  assert.match(errorOf(() => runAsm((a) => a.ldx(2, R0, R1, 0).exit(), { programType: 'xdp' })).message, /xdp_md->data must be read whole/);
  assert.match(errorOf(() => runAsm((a) => a.st(4, R1, 16, 1).movImm(R0, 0).exit(), { programType: 'sched_cls' })).message, /writes __sk_buff->protocol, which sched_cls programs may only read/);
  assert.match(errorOf(() => runAsm((a) => a.st(4, R1, 8, 1).movImm(R0, 0).exit(), { programType: 'xdp' })).message, /offset 8 of xdp_md|xdp_md->data_meta/);
});

test('context: __sk_buff fields as test-run gives them (len, protocol, ifindex) and writable mark/priority/cb', () => {
  const pkt = packet(60);
  pkt[12] = 0x08; pkt[13] = 0x00;
  const r = runAsm((a) => {
    a.ldx(4, R2, R1, 0).ldx(4, R3, R1, 16).alu64('lsh', R3, imm(16)).alu64('or', R2, R3);
    a.ldx(4, R3, R1, 40).alu64('lsh', R3, imm(8)).alu64('or', R2, R3).mov64(R0, R2);
    a.st(4, R1, 8, 0x1234).st(4, R1, 32, 6).st(4, R1, 48 + 8, 9).exit();
  }, { programType: 'sched_cls' }, pkt);
  assert.equal(r.retval, 60 | (0x0008 << 16) | (1 << 8));
  const vm = new Vm(new Assembler().st(4, R1, 8, 0x1234).movImm(R0, 0).exit().assemble().insns, { programType: 'sched_cls' });
  assert.equal(vm.run(pkt, { ctx: { mark: 5 } }).ctxField('mark'), 0x1234);
  assert.equal(new Vm(new Assembler().ldx(4, R0, R1, 8).exit().assemble().insns, { programType: 'sched_cls' }).run(pkt, { ctx: { mark: 5 } }).retval, 5);
});

test('map values: reads and writes within the value, beyond it an error naming the map', () => {
  const makeMaps = () => ({ out: outMap(1) });
  const r = runAsm((a) => a.ldMapValue(R2, 'out').st(4, R2, 4, 9).ldx(8, R0, R2, 0).alu64('rsh', R0, imm(32)).exit(), { programType: 'xdp', makeMaps });
  assert.equal(r.retval, 9);
  const err = errorOf(() => runAsm((a) => a.ldMapValue(R2, 'out').ldx(4, R0, R2, 6).exit(), { programType: 'xdp', makeMaps }));
  assert.equal(err.message, 'insn 2 (r0 = *(u32 *)(r2 + 6)): read of 4 bytes at offset 6 of a value of map out, beyond its 8 bytes');
});

test('pointer rules: only add/sub of numbers, same-region differences, null checks; others are errors', () => {
  const r = runAsm((a) => a.ldx(4, R2, R1, 0).ldx(4, R3, R1, 4).alu64('sub', R3, R2).mov64(R0, R3).exit(), { programType: 'xdp' }, packet(77));
  assert.equal(r.retval, 77);
  assert.match(errorOf(() => runAsm((a) => a.ldx(4, R2, R1, 0).alu64('mul', R2, imm(2)).movImm(R0, 0).exit())).message, /^insn 1 \(r2 \*= 2\): multiplication on a packet pointer/);
  assert.match(errorOf(() => runAsm((a) => a.ldx(4, R2, R1, 0).alu32('add', R2, imm(2)).movImm(R0, 0).exit())).message, /32-bit arithmetic on a packet pointer/);
  assert.match(errorOf(() => runAsm((a) => a.ldx(4, R2, R1, 0).jmp('jeq', R2, imm(5), 'x').label('x').movImm(R0, 0).exit())).message, /compares a packet pointer with a number/);
  assert.match(errorOf(() => runAsm((a) => a.ldx(4, R2, R1, 0).ldMapValue(R3, 'out').stx(8, R3, 0, R2).movImm(R0, 0).exit(), { programType: 'xdp', makeMaps: () => ({ out: outMap(1) }) })).message, /stores a packet pointer outside the stack/);
  assert.match(errorOf(() => runAsm((a) => a.mov64(R2, R10).ldx(4, R0, R2, 0).exit().label('x'))).message, /read of 4 bytes at stack offset fp\+0/);
  assert.match(errorOf(() => runAsm((a) => a.movImm(R2, 100).ldx(4, R0, R2, 0).exit())).message, /^insn 1 \(r0 = \*\(u32 \*\)\(r2 \+ 0\)\): read through r2, which holds a number, not a pointer to memory$/);
});

test('atomics on the stack and map values: add, fetch-add, or/and/xor, xchg, cmpxchg', () => {
  const r = runAsm((a) => {
    a.ldMapValue(R6, 'out').st(8, R6, 0, 40).movImm(R2, 2).atomicAdd(8, R6, 0, R2);
    a.movImm(R3, 1).atomic(8, R6, 0, R3, 0x00 | 0x01); // fetch add: r3 = 42, value 43
    a.stx(8, R6, 8, R3);
    a.movImm(R0, 43).movImm(R4, 100).atomic(8, R6, 0, R4, 0xf1); // cmpxchg: equal, value 100, r0 = 43
    a.stx(8, R6, 16, R0);
    a.movImm(R4, 7).atomic(4, R6, 24, R4, 0xe1); // xchg into zeroed word: r4 = 0
    a.stx(8, R6, 32, R4);
    a.movImm(R0, 0).exit();
  }, { programType: 'xdp', makeMaps: () => ({ out: outMap(5) }) });
  assert.deepEqual(r.out, [100n, 42n, 43n, 7n, 0n]);
});

test('a program that never ends is stopped', () => {
  const err = errorOf(() => runAsm((a) => a.label('top').ja('top').movImm(R0, 0).exit()));
  assert.match(err.message, /^insn 0 \(goto -1\): the run took more than \d+ backward jumps and calls/);
});

test('bpf-to-bpf calls: arguments in r1-r5, result in r0, r6-r9 preserved, callee stack frame separate', () => {
  const r = runAsm((a) => {
    a.movImm(R6, 1000).st(8, R10, -8, 5).movImm(R1, 3).movImm(R2, 4).callLocal('sum');
    a.alu64('add', R0, R6).ldx(8, R2, R10, -8).alu64('add', R0, R2).exit();
    a.label('sum').movImm(R6, 1).st(8, R10, -8, 99).mov64(R0, R1).alu64('add', R0, R2).exit();
  });
  assert.equal(r.retval, 3 + 4 + 1000 + 5);
});

test('programs the VM cannot run are refused before they run, naming the instruction', () => {
  const prep = (build: (a: Assembler) => void, type: 'xdp' | 'sched_cls' = 'xdp') => {
    const a = new Assembler();
    build(a);
    const { insns, mapRefs } = a.assemble();
    return errorOf(() => new Vm(insns, { programType: type, mapRefs }));
  };
  assert.equal(prep((a) => a.call(6).exit()).message, 'insn 0 (call 6): calls bpf_trace_printk, which the VM does not implement');
  assert.equal(prep((a) => a.call(9).exit()).message, 'insn 0 (call 9): calls bpf_skb_store_bytes, which xdp programs may not use');
  assert.match(prep((a) => a.movImm(R0, 0)).message, /run off its end/);
  assert.match(prep((a) => a.movImm(R10, 0).exit()).message, /writes r10/);
  assert.match(prep((a) => a.ldMap(R1, 'nope').exit()).message, /refers to map "nope", which is not in the VM's map table/);
  assert.match(errorOf(() => new Vm([{ code: 0x05, dst: 0, src: 0, off: 5, imm: 0 }, { code: 0x95, dst: 0, src: 0, off: 0, imm: 0 }], { programType: 'xdp' })).message, /outside the program|past the last/);
});

test('maps by fd number: a 64-bit immediate map load with src 1 looks the fd up in the table', () => {
  const counter = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 1 });
  const insns = new Assembler().st(4, R10, -4, 0).mov64(R2, R10).alu64('add', R2, imm(-4))
    .raw({ code: 0x18, dst: R1, src: 1, off: 0, imm: 7, imm2: 0 }).call(1)
    .jmp('jeq', R0, imm(0), 'x').st(8, R0, 0, 11).label('x').movImm(R0, 0).exit().assemble().insns;
  new Vm(insns, { programType: 'xdp', maps: new Map([[7, counter]]) }).run(packet());
  assert.equal(new DataView(counter.lookup(0)!.buffer).getUint32(0, true), 11);
});
