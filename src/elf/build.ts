/**
 * Compiled rules as an ELF object that the standard tools load: `ip link set dev D xdp object F.o`,
 * `tc filter add dev D ingress bpf da obj F.o sec tc`, `bpftool prog load F.o PATH`.
 *
 * What the object holds (the libbpf 1.x conventions, which iproute2 and bpftool follow):
 *   - one program section per hook (`xdp`, `tc`; or `tcx/ingress`, `tcx/egress` with sections
 *     'tcx'), a global function symbol per program, relocations for its map references;
 *   - `.maps`: one variable per map, its type, key/value sizes and entries described in BTF;
 *   - `.rodata`: the u64 global `nm_seed`. Tools create maps empty, so a compiled program
 *     seeds its per-CPU PRNG state from this global on its first packet on each CPU;
 *   - `license` ("GPL"), `.BTF`, `.symtab`, `.strtab`.
 */
import type { Insn } from '../bpf/insn.js';
import { LD_IMM64 } from '../bpf/opcodes.js';
import { compileGroup, SEED_GLOBAL, SEED_SECTION, type CompiledProgram, type MapSpec } from '../compiler/index.js';
import { NetmangleError } from '../errors.js';
import type { Hook, RuleGroup } from '../rules/ast.js';
import { lookupField } from '../rules/catalog.js';
import { encode } from '../bpf/insn.js';
import { BtfBuilder, type BtfVarInfo } from './btf.js';
import { ElfWriter, R_BPF, SHF, STB, STT } from './elf.js';

/** BPF_MAP_TYPE_* numbers of the maps compiled programs use. */
const MAP_TYPE_IDS: Record<MapSpec['type'], number> = { array: 2, hash: 1, percpu_array: 6, lru_hash: 9 };

export type SectionStyle = 'tc' | 'tcx';

export interface BuildOptions {
  /**
   * 'tc' (default): tc programs in section `tc`, which libbpf 1.1 (iproute2 6.1, bpftool 7.1)
   * knows. 'tcx': sections `tcx/ingress` and `tcx/egress` (libbpf 1.3 and later).
   */
  sections?: SectionStyle;
  license?: string;
}

/** Where each program and map ended up in the object. */
export interface BuiltProgram {
  hook: Hook;
  dev: string;
  section: string;
  /** The program's function symbol (libbpf's program name). */
  symbol: string;
  /** netmangle's map name (nm_state, nm_every) to the map's symbol in this object. */
  maps: Record<string, string>;
  compiled: CompiledProgram;
}

export interface BuiltObject {
  bytes: Uint8Array;
  programs: BuiltProgram[];
  seed: number;
}

export function sectionFor(hook: Hook, style: SectionStyle = 'tc'): string {
  if (hook === 'xdp') return 'xdp';
  return style === 'tcx' ? `tcx/${hook}` : 'tc';
}

/** Compiles every group (self-seeding, see compiler GenOptions.selfSeed) and writes one object. */
export function buildObjectFromGroups(groups: RuleGroup[], seed: number, opts: BuildOptions = {}): BuiltObject {
  if (groups.length === 0) throw new NetmangleError('no rules to build');
  return buildObject(groups.map((g) => compileGroup(g, { seed, lookupField, selfSeed: true })), opts);
}

const HOOK_TAG: Record<Hook, string> = { xdp: 'xdp', ingress: 'in', egress: 'eg' };

/** Writes compiled programs (all with the same seed) into one ELF object. */
export function buildObject(compiled: CompiledProgram[], opts: BuildOptions = {}): BuiltObject {
  if (compiled.length === 0) throw new NetmangleError('no programs to put in the object');
  const seed = compiled[0]!.seed;
  if (compiled.some((c) => c.seed !== seed)) throw new NetmangleError('the programs of one object must share one seed');
  const style = opts.sections ?? 'tc';
  const w = new ElfWriter();
  const btf = new BtfBuilder();
  const intId = btf.int('int', 4, true);
  const indexId = btf.int('__ARRAY_SIZE_TYPE__', 4, false);
  const arrayPtr = new Map<number, number>();
  /** `int (*name)[n]`: how libbpf's __uint(name, n) encodes a number in a map definition. */
  const uintField = (n: number): number => {
    let id = arrayPtr.get(n);
    if (id === undefined) {
      id = btf.ptr(btf.array(intId, indexId, n));
      arrayPtr.set(n, id);
    }
    return id;
  };

  const hookCount = new Map<Hook, number>();
  for (const c of compiled) hookCount.set(c.hook, (hookCount.get(c.hook) ?? 0) + 1);
  const single = compiled.length === 1;
  const usedSymbols = new Set<string>();
  const unique = (base: string): string => {
    let name = base;
    for (let i = 2; usedSymbols.has(name); i++) name = `${base}_${i}`;
    usedSymbols.add(name);
    return name;
  };

  // Program sections first (their order is the order tools list them).
  interface Placed { c: CompiledProgram; first: number; start: number; symbol: string; tag: string }
  const sectionData = new Map<string, { insns: Insn[]; progs: Placed[] }>();
  for (const c of compiled) {
    const section = sectionFor(c.hook, style);
    const entry = sectionData.get(section) ?? { insns: [], progs: [] };
    const repeated = (hookCount.get(c.hook) ?? 0) > 1;
    const symbol = unique(repeated ? `${c.name}_${sanitize(c.dev)}` : c.name);
    const tag = single ? '' : unique(`_${HOOK_TAG[c.hook]}${repeated ? entry.progs.filter((p) => p.c.hook === c.hook).length + 1 : ''}`);
    entry.progs.push({ c, first: entry.insns.length, start: slotLength(entry.insns), symbol, tag });
    entry.insns.push(...c.insns.map((i) => ({ ...i })));
    sectionData.set(section, entry);
  }

  const pendingRelocs: Array<{ section: number; offset: number; map: string }> = [];
  const built: BuiltProgram[] = [];
  const funcSymbols: Array<{ name: string; section: number; value: number; size: number }> = [];
  const protoCache = new Map<string, number>();
  for (const [section, entry] of sectionData) {
    const relocs: Array<{ offset: number; map: string }> = [];
    for (const p of entry.progs) {
      const slots = slotOffsets(p.c.insns);
      const maps: Record<string, string> = {};
      for (const spec of p.c.maps) maps[spec.name] = `${spec.name}${p.tag}`;
      for (const ref of p.c.mapRefs) {
        const insn = entry.insns[p.first + ref.index];
        if (!insn || insn.code !== LD_IMM64) throw new NetmangleError(`map reference to ${ref.map} is not on a 64-bit load`);
        // In an object the loader fills src_reg and imm; imm carries the offset into a value.
        insn.src = 0;
        insn.imm = ref.kind === 'value' ? ref.offset : 0;
        insn.imm2 = 0;
        const symbol = ref.map === SEED_SECTION ? SEED_GLOBAL : maps[ref.map];
        if (symbol === undefined) throw new NetmangleError(`program ${p.symbol} refers to map '${ref.map}', which it does not declare`);
        relocs.push({ offset: (p.start + slots[ref.index]!) * 8, map: symbol });
      }
      built.push({ hook: p.c.hook, dev: p.c.dev, section, symbol: p.symbol, maps, compiled: p.c });
      const ctxName = p.c.kind === 'xdp' ? 'xdp_md' : '__sk_buff';
      let proto = protoCache.get(ctxName);
      if (proto === undefined) {
        proto = btf.funcProto(intId, [{ name: 'ctx', type: btf.ptr(btf.fwdStruct(ctxName)) }]);
        protoCache.set(ctxName, proto);
      }
      btf.func(p.symbol, proto);
    }
    const index = w.addSection(section, encode(entry.insns), { flags: SHF.ALLOC | SHF.EXECINSTR, align: 8 });
    for (const p of entry.progs) funcSymbols.push({ name: p.symbol, section: index, value: p.start * 8, size: slotLength(p.c.insns) * 8 });
    for (const r of relocs) pendingRelocs.push({ section: index, ...r });
  }

  // .maps: each map a 32-byte struct { type, key_size, value_size, max_entries } of zeros, described in BTF.
  const mapVars: BtfVarInfo[] = [];
  const mapSymbols: Array<{ name: string; offset: number }> = [];
  let mapOffset = 0;
  for (const b of built) {
    for (const spec of b.compiled.maps) {
      const symbol = b.maps[spec.name]!;
      const struct = btf.struct('', 32, [
        { name: 'type', type: uintField(MAP_TYPE_IDS[spec.type]), bitOffset: 0 },
        { name: 'key_size', type: uintField(spec.keySize), bitOffset: 64 },
        { name: 'value_size', type: uintField(spec.valueSize), bitOffset: 128 },
        { name: 'max_entries', type: uintField(spec.maxEntries), bitOffset: 192 },
      ]);
      mapVars.push({ type: btf.variable(symbol, struct), offset: mapOffset, size: 32 });
      mapSymbols.push({ name: symbol, offset: mapOffset });
      mapOffset += 32;
    }
  }
  const symbolOf = new Map<string, ReturnType<ElfWriter['addSymbol']>>();
  const mapsSection = mapOffset > 0 ? w.addSection('.maps', new Uint8Array(mapOffset), { flags: SHF.WRITE | SHF.ALLOC, align: 8 }) : 0;
  if (mapsSection) btf.datasec('.maps', mapOffset, mapVars);

  const needsSeed = pendingRelocs.some((r) => r.map === SEED_GLOBAL);
  let rodata = 0;
  if (needsSeed) {
    const value = new Uint8Array(8);
    new DataView(value.buffer).setBigUint64(0, BigInt(seed), true);
    rodata = w.addSection(SEED_SECTION, value, { flags: SHF.ALLOC, align: 8 });
    const u64 = btf.typedef('__u64', btf.int('unsigned long long', 8, false));
    btf.datasec(SEED_SECTION, 8, [{ type: btf.variable(SEED_GLOBAL, u64), offset: 0, size: 8 }]);
  }
  const license = new TextEncoder().encode(`${opts.license ?? 'GPL'}\0`);
  const licenseSection = w.addSection('license', license, { flags: SHF.WRITE | SHF.ALLOC, align: 1 });
  w.addSection('.BTF', btf.encode(), { align: 4 });

  for (const f of funcSymbols) w.addSymbol({ name: f.name, section: f.section, value: f.value, size: f.size, type: STT.FUNC, bind: STB.GLOBAL });
  for (const m of mapSymbols) symbolOf.set(m.name, w.addSymbol({ name: m.name, section: mapsSection, value: m.offset, size: 32, type: STT.OBJECT, bind: STB.GLOBAL }));
  if (rodata) symbolOf.set(SEED_GLOBAL, w.addSymbol({ name: SEED_GLOBAL, section: rodata, value: 0, size: 8, type: STT.OBJECT, bind: STB.GLOBAL }));
  w.addSymbol({ name: '_license', section: licenseSection, value: 0, size: license.length, type: STT.OBJECT, bind: STB.GLOBAL });
  for (const r of pendingRelocs) {
    const sym = symbolOf.get(r.map);
    if (!sym) throw new NetmangleError(`the program refers to map '${r.map}', which it does not declare`);
    w.addRelocation(r.section, r.offset, sym, R_BPF.R_64_64);
  }
  built.sort((a, b) => compiled.indexOf(a.compiled) - compiled.indexOf(b.compiled));
  return { bytes: w.finish(), programs: built, seed };
}

function sanitize(s: string): string {
  return s.replace(/[^A-Za-z0-9_]/g, '_');
}

function slotLength(insns: readonly Insn[]): number {
  let n = 0;
  for (const i of insns) n += i.code === LD_IMM64 ? 2 : 1;
  return n;
}

/** Slot index of every instruction. */
function slotOffsets(insns: readonly Insn[]): number[] {
  const out: number[] = [];
  let n = 0;
  for (const i of insns) {
    out.push(n);
    n += i.code === LD_IMM64 ? 2 : 1;
  }
  return out;
}
