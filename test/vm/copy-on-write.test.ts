/**
 * The VM runs a program on the caller's bytes and copies them only at the first write
 * (Machine.makeWritable): the caller's buffer never changes, `written` says whether the run
 * wrote (every store path and every helper that writes the packet sets it), and a run that
 * writes after one that read in place sees zeros outside its packet as before.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Assembler, imm } from '../../src/bpf/asm.js';
import { R0, R1, R2, R3, R4, R5, R6, R10 } from '../../src/bpf/opcodes.js';
import { Vm, type Engine } from '../../src/vm/vm.js';
import { packet } from './support.js';

const ENGINES: Engine[] = ['interpreter', 'jit'];
const H = { storeBytes: 9, l3: 10, loadBytes: 26, changeTail: 38, adjustHead: 44 };

/** r2 = data, r3 = data_end (tc offsets); exits with 1 unless 20 bytes are there. */
function tcData(a: Assembler): Assembler {
  return a.mov64(R6, R1).ldx(4, R2, R1, 76).ldx(4, R3, R1, 80).mov64(R4, R2).alu64('add', R4, imm(20)).jmp('jgt', R4, R3, 'short');
}

interface Case {
  name: string;
  type: 'xdp' | 'sched_cls';
  writes: boolean;
  build: (a: Assembler) => void;
  /** Checks the output of a writing run. */
  check?: (out: Uint8Array, input: Uint8Array) => void;
}

const CASES: Case[] = [
  {
    name: 'reads only', type: 'sched_cls', writes: false,
    build: (a) => { tcData(a).ldx(1, R0, R2, 3).exit().label('short').movImm(R0, 1).exit(); },
  },
  {
    name: 'a store of an immediate (ST)', type: 'sched_cls', writes: true,
    build: (a) => { tcData(a).st(1, R2, 5, 0xab).movImm(R0, 0).exit().label('short').movImm(R0, 1).exit(); },
    check: (out) => assert.equal(out[5], 0xab),
  },
  {
    name: 'a store of a register (STX)', type: 'xdp', writes: true,
    build: (a) => {
      a.ldx(4, R2, R1, 0).ldx(4, R3, R1, 4).mov64(R4, R2).alu64('add', R4, imm(20)).jmp('jgt', R4, R3, 'short');
      a.movImm(R5, 0x1234).stx(2, R2, 8, R5).movImm(R0, 2).exit().label('short').movImm(R0, 1).exit();
    },
    check: (out) => assert.deepEqual([out[8], out[9]], [0x34, 0x12]),
  },
  {
    name: 'the same value stored back (written, not changed)', type: 'sched_cls', writes: true,
    build: (a) => { tcData(a).ldx(1, R5, R2, 7).stx(1, R2, 7, R5).movImm(R0, 0).exit().label('short').movImm(R0, 1).exit(); },
    check: (out, input) => assert.deepEqual([...out], [...input]),
  },
  {
    name: 'skb_store_bytes', type: 'sched_cls', writes: true,
    build: (a) => {
      a.mov64(R6, R1).st(4, R10, -8, 0x44332211);
      a.mov64(R1, R6).movImm(R2, 2).mov64(R3, R10).alu64('add', R3, imm(-8)).movImm(R4, 4).movImm(R5, 0).call(H.storeBytes).exit();
    },
    check: (out) => assert.deepEqual([...out.subarray(2, 6)], [0x11, 0x22, 0x33, 0x44]),
  },
  {
    name: 'l3_csum_replace', type: 'sched_cls', writes: true,
    build: (a) => { a.movImm(R2, 24).movImm(R3, 0).movImm(R4, 0x100).movImm(R5, 2).call(H.l3).exit(); },
  },
  {
    name: 'skb_load_bytes into the packet itself', type: 'sched_cls', writes: true,
    build: (a) => {
      tcData(a).mov64(R3, R2).mov64(R1, R6).movImm(R2, 10).movImm(R4, 4).call(H.loadBytes).exit().label('short').movImm(R0, 1).exit();
    },
    check: (out, input) => assert.deepEqual([...out.subarray(0, 4)], [...input.subarray(10, 14)]),
  },
  {
    name: 'skb_change_tail', type: 'sched_cls', writes: true,
    build: (a) => { a.movImm(R2, 30).movImm(R3, 0).call(H.changeTail).exit(); },
    check: (out) => assert.equal(out.length, 30),
  },
  {
    name: 'xdp_adjust_head into the headroom', type: 'xdp', writes: true,
    build: (a) => { a.movImm(R2, -8).call(H.adjustHead).exit(); },
    check: (out, input) => {
      assert.deepEqual([...out.subarray(0, 8)], new Array(8).fill(0));
      assert.deepEqual([...out.subarray(8)], [...input]);
    },
  },
];

for (const c of CASES) {
  test(`copy on write: ${c.name} ${c.writes ? 'sets' : 'leaves'} written, and the caller's bytes never change`, () => {
    const { insns } = (() => { const a = new Assembler(); c.build(a); return a.assemble(); })();
    for (const engine of ENGINES) {
      const vm = new Vm(insns, { programType: c.type, engine });
      // The packet in the middle of a bigger buffer, as a reader's chunk holds it.
      const buffer = packet(200, (i) => (i * 7 + 3) & 0xff);
      const before = buffer.slice();
      const r = vm.runAt(buffer, 50, 60);
      assert.equal(vm.machine.written, c.writes, engine);
      assert.deepEqual([...buffer], [...before], `${engine}: the caller's buffer changed`);
      const input = before.subarray(50, 110);
      if (!c.writes) {
        // Not copied: the output is the caller's own bytes, in place.
        assert.equal(vm.machine.pkt, buffer);
        assert.deepEqual([...r.packet], [...input]);
      } else {
        assert.notEqual(vm.machine.pkt, buffer);
        c.check?.(r.packet, input);
      }
    }
  });
}

test('copy on write: after runs in place, a writing run that grows the packet reads zeros outside it, not older bytes', () => {
  const grow = new Assembler().movImm(R2, 100).movImm(R3, 0).call(H.changeTail).exit().assemble().insns;
  const read = new Assembler().movImm(R0, 0).exit().assemble().insns;
  for (const engine of ENGINES) {
    const writer = new Vm(grow, { programType: 'sched_cls', engine });
    writer.run(packet(90, () => 0x77));
    const reader = new Vm(read, { programType: 'sched_cls', engine });
    reader.run(packet(90, () => 0x55));
    const second = writer.run(packet(20, () => 0x11));
    assert.equal(second.packet.length, 100);
    assert.deepEqual([...second.packet.subarray(0, 20)], new Array(20).fill(0x11));
    assert.deepEqual([...second.packet.subarray(20)], new Array(80).fill(0), engine);
  }
});

test('copy on write: a run in place after a writing run gives the new packet, not the machine\'s copy of the old one', () => {
  const insns = new Assembler().ldx(4, R2, R1, 76).ldx(4, R3, R1, 80).mov64(R4, R2).alu64('add', R4, imm(1)).jmp('jgt', R4, R3, 'x')
    .ldx(1, R5, R2, 0).jmp('jne', R5, imm(1), 'x').st(1, R2, 0, 9).label('x').movImm(R0, 0).exit().assemble().insns;
  for (const engine of ENGINES) {
    const vm = new Vm(insns, { programType: 'sched_cls', engine });
    assert.deepEqual([...vm.run(packet(20, () => 1)).packet.subarray(0, 2)], [9, 1]);
    assert.equal(vm.machine.written, true);
    const second = vm.run(packet(20, () => 2));
    assert.equal(vm.machine.written, false);
    assert.deepEqual([...second.packet], new Array(20).fill(2), engine);
  }
});

test('copy on write: copyPacket copies a packet still in the caller\'s Buffer (whose slice would be a view)', () => {
  const insns = new Assembler().movImm(R0, 2).exit().assemble().insns;
  for (const engine of ENGINES) {
    const input = Buffer.from(packet(40));
    const copy = new Vm(insns, { programType: 'xdp', engine }).run(input).copyPacket();
    input[0] = 0xff;
    assert.equal(copy[0], 0, engine);
  }
});

test('copy on write: the range written is the hull of the stores, and everything once a helper wrote', () => {
  const stores = new Assembler().ldx(4, R2, R1, 76).ldx(4, R3, R1, 80).mov64(R4, R2).alu64('add', R4, imm(20)).jmp('jgt', R4, R3, 'x')
    .st(1, R2, 9, 1).st(2, R2, 4, 2).label('x').movImm(R0, 0).exit().assemble().insns;
  const helper = new Assembler().movImm(R2, 24).movImm(R3, 0).movImm(R4, 0x100).movImm(R5, 2).call(H.l3).exit().assemble().insns;
  const none = new Assembler().movImm(R0, 0).exit().assemble().insns;
  for (const engine of ENGINES) {
    const m = (insns: ReturnType<Assembler['assemble']>['insns']) => {
      const vm = new Vm(insns, { programType: 'sched_cls', engine });
      vm.run(packet(60));
      return [vm.machine.written, vm.machine.writtenLow, vm.machine.writtenHigh];
    };
    assert.deepEqual(m(stores), [true, 4, 10], engine);
    assert.deepEqual(m(helper), [true, 0, Infinity], engine);
    assert.deepEqual(m(none), [false, 0, 0], engine);
  }
});
