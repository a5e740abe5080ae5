import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { BPF_PSEUDO_CALL } from '../../src/bpf/opcodes.js';
import { parseObject } from '../../src/elf/object.js';
import { chooseProgram } from '../../src/elf/load.js';
import { NetmangleError } from '../../src/errors.js';
import { CORE_C, FEATURES_C, KFUNC_C, LEGACY_MAPS_C, NO_LICENSE_C, PINNED_C, UNKNOWN_MAP_C } from './fixtures.js';
import { compileC, toolTest } from './tools.js';

function parseC(source: string, name: string) {
  const o = compileC(source, name);
  try {
    return parseObject(new Uint8Array(readFileSync(o.path)), `${name}.o`);
  } finally {
    o.cleanup();
  }
}

toolTest('a clang object: programs by section, maps from BTF, global data as array maps', ['clang'], () => {
  const obj = parseC(FEATURES_C, 'features');
  assert.equal(obj.license, 'GPL');
  assert.deepEqual(obj.programs.map((p) => [p.name, p.section, p.type]), [['features_xdp', 'xdp', 'xdp'], ['features_tc', 'tc', 'sched_cls']]);
  const shape = (n: string) => {
    const m = obj.maps.get(n)!;
    return [m.type, m.keySize, m.valueSize, m.maxEntries];
  };
  assert.deepEqual(shape('counts'), ['hash', 4, 8, 16]);
  assert.deepEqual(shape('recent'), ['lru_hash', 4, 4, 16]);
  assert.deepEqual(shape('bytes_seen'), ['percpu_array', 4, 8, 4]);
  assert.deepEqual(shape('per_flow'), ['lru_percpu_hash', 4, 8, 8]);
  assert.deepEqual(shape('events'), ['ringbuf', 0, 0, 4096]);
  assert.deepEqual(shape('.rodata'), ['array', 4, 4, 1]);
  assert.deepEqual([...obj.maps.get('.rodata')!.initial!], [2, 0, 0, 0], 'verdict = XDP_PASS');
  assert.equal(obj.maps.get('.rodata')!.freeze, true);
  assert.deepEqual([...obj.maps.get('.data')!.initial!], [7, 0, 0, 0], 'bonus = 7');
  assert.deepEqual([...obj.maps.get('.bss')!.initial!], new Array(8).fill(0));
  assert.ok(!obj.maps.get('.bss')!.freeze, 'only .rodata is frozen');
});

toolTest('linking a program appends its callees from .text once and points every call at them', ['clang'], () => {
  const obj = parseC(FEATURES_C, 'features');
  const linked = obj.link('features_xdp');
  const slotOf: number[] = [];
  let slot = 0;
  for (const i of linked.insns) {
    slotOf.push(slot);
    slot += i.code === 0x18 ? 2 : 1;
  }
  const calls = linked.insns.map((insn, i) => ({ insn, i })).filter(({ insn }) => insn.code === 0x85 && insn.src === BPF_PSEUDO_CALL);
  assert.equal(calls.length, 2, 'features_xdp calls account, account calls scaled');
  const targets = calls.map(({ insn, i }) => slotOf[i]! + insn.imm + 1);
  for (const t of targets) {
    assert.ok(t > 0 && t < slot, 'target inside the program');
    assert.ok(slotOf.includes(t), 'target on an instruction boundary');
  }
  assert.notEqual(targets[0], targets[1], 'two different callees');
  // The instruction before each callee is the previous function's exit.
  for (const t of targets) assert.equal(linked.insns[slotOf.indexOf(t) - 1]!.code, 0x95);
  assert.deepEqual(linked.usesMaps.sort(), ['.bss', '.data', '.rodata', 'bytes_seen', 'counts', 'events', 'last_len', 'per_flow', 'recent']);
  const kinds = new Set(linked.mapRefs.map((r) => `${r.map}:${r.kind}`));
  assert.ok(kinds.has('counts:fd') && kinds.has('.rodata:value') && kinds.has('.bss:value') && kinds.has('.data:value'));
  assert.ok(linked.mapRefs.every((r) => linked.insns[r.index]!.code === 0x18));
});

toolTest('program choice: by section, by function name, or the only one that fits the hook', ['clang'], () => {
  const obj = parseC(FEATURES_C, 'features');
  assert.equal(chooseProgram(obj, { wantType: 'xdp' }), 'features_xdp');
  assert.equal(chooseProgram(obj, { wantType: 'sched_cls' }), 'features_tc');
  assert.equal(chooseProgram(obj, { select: 'tc' }), 'features_tc');
  assert.equal(chooseProgram(obj, { select: 'features_xdp' }), 'features_xdp');
  assert.throws(() => chooseProgram(obj, { select: 'nope' }), /no section or program named nope/);
  assert.throws(() => chooseProgram(obj, {}), /2 programs that fit; choose one with --section/);
});

const refusals: Array<[string, string, RegExp, string?]> = [
  ['legacy', LEGACY_MAPS_C, /legacy "maps" section/],
  ['core', CORE_C, /CO-RE relocations/],
  ['kfunc', KFUNC_C, /bpf_rcu_read_lock.*kfunc|kfunc.*bpf_rcu_read_lock|extern function bpf_rcu_read_lock/, 'kf'],
  ['pinned', PINNED_C, /pinned_map asks to be pinned/],
  ['stack', UNKNOWN_MAP_C, /a_stack has type stack, which netmangle load does not support/],
  ['nolicense', NO_LICENSE_C, /has no "license" section/],
];
for (const [name, source, message, program] of refusals) {
  toolTest(`an object netmangle cannot load is refused, naming what is missing: ${name}`, ['clang'], () => {
    assert.throws(() => {
      const obj = parseC(source, name);
      obj.link(program ?? obj.programs[0]!.name);
    }, (e: unknown) => e instanceof NetmangleError && message.test(e.message) && e.message.startsWith(`${name}.o`));
  });
}
