import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode } from '../../src/bpf/insn.js';
import { LD_IMM64 } from '../../src/bpf/opcodes.js';
import { compileGroup, SEED_GLOBAL } from '../../src/compiler/index.js';
import { BtfBuilder, KIND, parseBtf } from '../../src/elf/btf.js';
import { buildObject, buildObjectFromGroups } from '../../src/elf/build.js';
import { EM_BPF, ElfWriter, R_BPF, SHF, STB, STT, readElf } from '../../src/elf/elf.js';
import { parseObject } from '../../src/elf/object.js';
import { NetmangleError } from '../../src/errors.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { run, toolTest } from './tools.js';

const TTL_RULE = 'icmp.type == 0 and ip.ttl > 0 => set ip.ttl = random(1, ip.ttl)';
const PSH_RULE = 'tcp and not (tcp.flags.syn or tcp.flags.fin or tcp.flags.reset or tcp.flags.push) => set tcp.flags.push = 1';

function groups(rule: string, hook: string, extra: { probability?: number; every?: number; dev?: string } = {}) {
  return parseRuleLine(rule, { dev: extra.dev ?? 'veth0', hook, probability: extra.probability, every: extra.every }).groups;
}

test('ElfWriter output reads back: sections, symbols (locals first), relocations', () => {
  const w = new ElfWriter();
  const code = w.addSection('xdp', new Uint8Array(32), { flags: SHF.ALLOC | SHF.EXECINSTR, align: 8 });
  const data = w.addSection('.data', new Uint8Array([1, 2, 3, 4]), { flags: SHF.ALLOC | SHF.WRITE, align: 4 });
  w.addSymbol({ name: 'prog', section: code, value: 0, size: 32, type: STT.FUNC, bind: STB.GLOBAL });
  const local = w.addSymbol({ name: 'helper_label', section: code, value: 16, type: STT.NOTYPE, bind: STB.LOCAL });
  const g = w.addSymbol({ name: 'counter', section: data, value: 0, size: 4, type: STT.OBJECT, bind: STB.GLOBAL });
  w.addRelocation(code, 8, g, R_BPF.R_64_64);
  w.addRelocation(code, 16, local, R_BPF.R_64_32);
  const elf = readElf(w.finish());
  assert.equal(elf.machine, EM_BPF);
  assert.deepEqual(elf.sections.map((s) => s.name), ['', 'xdp', '.data', '.relxdp', '.symtab', '.strtab']);
  assert.deepEqual([...elf.section('.data')!.data], [1, 2, 3, 4]);
  assert.equal(elf.section('.data')!.offset % 4, 0, 'aligned');
  assert.deepEqual(elf.symbols.map((s) => s.name), ['', 'helper_label', 'prog', 'counter']);
  const symtab = elf.section('.symtab')!;
  assert.equal(symtab.info, 2, 'sh_info: index of the first global');
  const relocs = elf.relocationsFor(code);
  assert.deepEqual(relocs.map((r) => [r.offset, elf.symbols[r.symbol]!.name, r.type]), [[8, 'counter', 1], [16, 'helper_label', 10]]);
});

test('readElf refuses what is not a little-endian BPF relocatable object, saying why', () => {
  assert.throws(() => readElf(new Uint8Array(100), 'x.o'), (e: unknown) => e instanceof NetmangleError && /x\.o is not a BPF object file: no ELF header/.test(e.message));
  const w = new ElfWriter();
  const bytes = w.finish();
  new DataView(bytes.buffer).setUint16(18, 62, true); // EM_X86_64
  assert.throws(() => readElf(bytes, 'y.o'), /machine is 62, not Linux BPF/);
  const be = new ElfWriter().finish();
  be[5] = 2;
  assert.throws(() => readElf(be), /big-endian/);
});

test('BTF encodes and decodes: ints, pointers, arrays, structs, vars, datasecs; sizeOf follows them', () => {
  const b = new BtfBuilder();
  const int = b.int('int', 4, true);
  const idx = b.int('__ARRAY_SIZE_TYPE__', 4, false);
  const arr = b.array(int, idx, 6);
  const ptr = b.ptr(arr);
  const st = b.struct('pair', 16, [{ name: 'a', type: ptr, bitOffset: 0 }, { name: 'b', type: arr, bitOffset: 64 }]);
  const td = b.typedef('pair_t', st);
  const v = b.variable('thing', td);
  b.datasec('.maps', 16, [{ type: v, offset: 0, size: 16 }]);
  const btf = parseBtf(b.encode());
  assert.equal(btf.types.length, 9);
  assert.equal(btf.get(int).int!.encoding, 1);
  assert.equal(btf.get(arr).array!.nelems, 6);
  assert.deepEqual(btf.get(st).members!.map((m) => [m.name, m.bitOffset]), [['a', 0], ['b', 64]]);
  assert.equal(btf.sizeOf(arr), 24);
  assert.equal(btf.sizeOf(ptr), 8);
  assert.equal(btf.sizeOf(td), 16);
  assert.equal(btf.sizeOf(v), 16);
  const sec = btf.byName('.maps', KIND.DATASEC)!;
  assert.equal(btf.get(sec.vars![0]!.type).name, 'thing');
  assert.throws(() => parseBtf(new Uint8Array(24)), /bad magic/);
});

test('a built object: program section, function symbol, .maps in BTF, seed in .rodata, license, relocations', () => {
  const built = buildObjectFromGroups(groups(TTL_RULE, 'xdp'), 1234);
  const elf = readElf(built.bytes);
  const names = elf.sections.map((s) => s.name);
  for (const n of ['xdp', '.maps', '.rodata', 'license', '.BTF', '.relxdp', '.symtab', '.strtab']) assert.ok(names.includes(n), n);
  const fn = elf.symbols.find((s) => s.name === 'nm_xdp')!;
  assert.equal(fn.type, STT.FUNC);
  assert.equal(fn.bind, STB.GLOBAL);
  assert.equal(fn.size, elf.section('xdp')!.size);
  assert.equal(new TextDecoder().decode(elf.section('license')!.data), 'GPL\0');
  assert.equal(new DataView(elf.section('.rodata')!.data.buffer, elf.section('.rodata')!.data.byteOffset).getBigUint64(0, true), 1234n);
  const relocNames = elf.relocationsFor(elf.section('xdp')!.index).map((r) => elf.symbols[r.symbol]!.name);
  assert.deepEqual([...new Set(relocNames)].sort(), ['nm_seed', 'nm_state']);

  // Read back through the object reader: the map's shape from BTF, the program's code unchanged
  // except for the map loads, whose references point where the compiler put them.
  const obj = parseObject(built.bytes, 'built.o');
  const state = obj.maps.get('nm_state')!;
  const spec = built.programs[0]!.compiled.maps[0]!;
  assert.deepEqual([state.type, state.keySize, state.valueSize, state.maxEntries], [spec.type, spec.keySize, spec.valueSize, spec.maxEntries]);
  assert.equal(obj.maps.get('.rodata')!.freeze, true);
  const linked = obj.link('nm_xdp');
  const compiled = built.programs[0]!.compiled;
  assert.equal(linked.type, 'xdp');
  assert.equal(linked.insns.length, compiled.insns.length);
  assert.deepEqual(
    linked.mapRefs.map((r) => [r.index, r.map, r.kind]),
    compiled.mapRefs.map((r) => [r.index, r.map === '.rodata' ? '.rodata' : r.map, r.kind]),
  );
  linked.insns.forEach((insn, i) => {
    if (insn.code === LD_IMM64 && compiled.mapRefs.some((r) => r.index === i)) return;
    assert.deepEqual(encode([insn]), encode([compiled.insns[i]!]), `instruction ${i}`);
  });
});

test('several groups: one section per hook, one symbol and one set of maps per program', () => {
  const all = [
    ...groups(TTL_RULE, 'xdp'),
    ...groups(PSH_RULE, 'egress', { every: 3 }),
    ...groups(PSH_RULE, 'ingress'),
    ...groups(TTL_RULE, 'xdp', { dev: 'veth1' }),
  ];
  const built = buildObjectFromGroups(all, 5);
  assert.deepEqual(built.programs.map((p) => [p.section, p.symbol]), [
    ['xdp', 'nm_xdp_veth0'], ['tc', 'nm_egress'], ['tc', 'nm_ingress'], ['xdp', 'nm_xdp_veth1'],
  ]);
  const obj = parseObject(built.bytes);
  assert.deepEqual(obj.programs.map((p) => p.name).sort(), ['nm_egress', 'nm_ingress', 'nm_xdp_veth0', 'nm_xdp_veth1']);
  assert.deepEqual([...obj.maps.keys()].filter((n) => n.startsWith('nm_')).sort(), ['nm_every_eg', 'nm_state_eg', 'nm_state_in', 'nm_state_xdp1', 'nm_state_xdp2']);
  const eg = obj.link('nm_egress');
  assert.deepEqual(eg.usesMaps.sort(), ['.rodata', 'nm_every_eg', 'nm_state_eg']);
  for (const p of built.programs) assert.ok(Object.values(p.maps).every((m) => m.length <= 15), 'map names fit the kernel');
  const tcx = buildObjectFromGroups(groups(PSH_RULE, 'ingress'), 5, { sections: 'tcx' });
  assert.deepEqual(tcx.programs.map((p) => p.section), ['tcx/ingress']);
});

test('buildObject refuses programs with different seeds', () => {
  const a = compileGroup(groups(TTL_RULE, 'xdp')[0]!, { seed: 1, lookupField, selfSeed: true });
  const b = compileGroup(groups(PSH_RULE, 'egress')[0]!, { seed: 2, lookupField, selfSeed: true });
  assert.throws(() => buildObject([a, b]), /share one seed/);
});

test('the self-seeding code is only in programs compiled for objects', () => {
  const g = groups(TTL_RULE, 'xdp')[0]!;
  const live = compileGroup(g, { seed: 9, lookupField });
  const obj = compileGroup(g, { seed: 9, lookupField, selfSeed: true });
  assert.ok(!live.mapRefs.some((r) => r.map === '.rodata'));
  assert.ok(obj.mapRefs.some((r) => r.map === '.rodata' && r.kind === 'value'));
  assert.ok(obj.insns.length > live.insns.length);
  assert.equal(SEED_GLOBAL, 'nm_seed');
});

toolTest('readelf says Machine: Linux BPF; llvm-objdump disassembles every slot of the program', ['readelf', 'llvm-objdump'], () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-elf-'));
  try {
    const built = buildObjectFromGroups(groups(PSH_RULE, 'egress', { probability: 0.1 }), 77);
    const file = join(dir, 'psh.o');
    writeFileSync(file, built.bytes);
    assert.match(run('readelf', ['-h', file]).stdout, /Machine:\s+Linux BPF/);
    assert.match(run('readelf', ['-h', file]).stdout, /Type:\s+REL/);
    const dis = run('llvm-objdump', ['-d', '-r', file]).stdout;
    assert.match(dis, /Disassembly of section tc:/);
    assert.match(dis, /<nm_egress>:/);
    assert.match(dis, /R_BPF_64_64\s+nm_state/);
    assert.match(dis, /R_BPF_64_64\s+nm_seed/);
    const slots = dis.split('\n').filter((l) => /^\s+\d+:\t/.test(l)).map((l) => Number(/^\s+(\d+):/.exec(l)![1]));
    const total = built.programs[0]!.compiled.insns.reduce((n, i) => n + (i.code === LD_IMM64 ? 2 : 1), 0);
    assert.equal(slots.at(-1)! + 1, total, 'the listing reaches the last slot');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
