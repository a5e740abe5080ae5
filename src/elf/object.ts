/**
 * Reading BPF objects built by clang (or by `netmangle build`) into what the kernel needs:
 * per program, its instructions with bpf-to-bpf callees appended and call offsets fixed, and
 * which 64-bit loads refer to which map; per map, its shape from BTF (`.maps`) or from its
 * section (`.rodata*`, `.data*`, `.bss*` globals become one-entry array maps holding the
 * section's bytes, as libbpf makes them).
 *
 * Supported: program sections, license, `.maps` with BTF (array, hash, per-CPU array and hash,
 * LRU hash and LRU per-CPU hash, ringbuf), map relocations, global data, bpf-to-bpf calls.
 * Anything else the program needs (the legacy `maps` section, CO-RE relocations, kfuncs and
 * extern symbols, callbacks, pinning, map-in-map) is refused with a message naming it.
 */
import type { MapRef } from '../bpf/asm.js';
import { decode, DecodeError, type Insn } from '../bpf/insn.js';
import { BPF_PSEUDO_CALL, LD_IMM64 } from '../bpf/opcodes.js';
import { NetmangleError } from '../errors.js';
import { MAP_TYPES, nameOf, type MapType, type ProgramType } from '../kernel/sys.js';
import { KIND, kindName, parseBtf, type Btf } from './btf.js';
import { R_BPF, SHF, SHN_ABS, SHN_UNDEF, SHT, STT, readElf, type ElfFile, type ElfSection, type ElfSymbol } from './elf.js';

const BPF_CALL_CODE = 0x85;
const BPF_PSEUDO_KFUNC_CALL = 2;
const BPF_PSEUDO_FUNC = 4;
/** BPF_F_RDONLY_PROG: the program may only read the map (libbpf's `.rodata`). */
const BPF_F_RDONLY_PROG = 1 << 7;
const BPF_F_XDP_HAS_FRAGS = 1 << 5;

const SUPPORTED_MAP_TYPES = new Set<MapType>(['hash', 'array', 'percpu_hash', 'percpu_array', 'lru_hash', 'lru_percpu_hash', 'ringbuf']);

export interface ObjectMap {
  /** The map's symbol in `.maps`, or the data section's name (`.rodata`, `.bss` ...). */
  name: string;
  type: MapType;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  /** Global data: the value of key 0 before the program runs. */
  initial?: Uint8Array;
  /** `.rodata*`: frozen after its value is written, so the verifier may trust its contents. */
  freeze?: boolean;
}

export interface ObjectProgram {
  /** The function's symbol. */
  name: string;
  section: string;
  /** Program type from the section name (libbpf's names), undefined when netmangle does not know it. */
  type?: ProgramType;
  /** BPF_F_* load flags (xdp.frags sets BPF_F_XDP_HAS_FRAGS). */
  flags: number;
}

export interface LinkedProgram extends ObjectProgram {
  type: ProgramType;
  insns: Insn[];
  mapRefs: MapRef[];
  /** Names (keys of BpfObject.maps) of the maps this program uses. */
  usesMaps: string[];
}

export interface BpfObject {
  /** What the object was called in messages (its path). */
  file: string;
  license: string;
  maps: Map<string, ObjectMap>;
  programs: ObjectProgram[];
  /** A program ready to load; refuses what netmangle does not support, naming it. */
  link(name: string): LinkedProgram;
}

/** Program type for a section name, as libbpf assigns it (network program types only). */
export function programTypeOf(section: string): { type: ProgramType; flags: number } | undefined {
  if (section === 'xdp' || section.startsWith('xdp/')) return { type: 'xdp', flags: 0 };
  if (section === 'xdp.frags' || section.startsWith('xdp.frags/')) return { type: 'xdp', flags: BPF_F_XDP_HAS_FRAGS };
  if (section === 'tc' || section.startsWith('tc/') || section.startsWith('tcx/') || section === 'classifier' || section.startsWith('classifier/')) {
    return { type: 'sched_cls', flags: 0 };
  }
  if (section === 'action' || section.startsWith('action/')) return { type: 'sched_act', flags: 0 };
  return undefined;
}

const isDataSection = (name: string) => /^\.(rodata|data|bss)(\.|$)/.test(name);

/** The largest value an array map may have (the kernel's KMALLOC_MAX_SIZE on x86-64): global data beyond it cannot load. */
const MAX_DATA_SECTION = 4 << 20;

export function parseObject(bytes: Uint8Array, file = 'the object'): BpfObject {
  const elf = readElf(bytes, file);
  const refuse = (what: string, hint?: string) => new NetmangleError(`${file}: ${what}`, { hint });

  if (elf.section('maps')) {
    throw refuse('declares maps in the legacy "maps" section, which netmangle (like libbpf 1.x) does not read',
      'declare them in SEC(".maps") with __uint/__type (BTF-defined maps)');
  }
  const licenseSection = elf.section('license');
  if (!licenseSection) throw refuse('has no "license" section', 'add: char _license[] SEC("license") = "GPL";');
  const license = cString(licenseSection.data);

  const btfSection = elf.section('.BTF');
  const btf = btfSection ? parseBtf(btfSection.data) : undefined;
  checkNoCoRe(elf, refuse);

  const maps = new Map<string, ObjectMap>();
  /** `.maps` byte offset → map name. */
  const mapAtOffset = new Map<number, string>();
  const mapsSection = elf.section('.maps');
  if (mapsSection) {
    if (!btf) throw refuse('has a ".maps" section but no ".BTF" to describe it', 'compile with clang -g (BTF is what describes the maps)');
    const sec = btf.byName('.maps', KIND.DATASEC);
    if (!sec) throw refuse('its BTF has no DATASEC ".maps"');
    for (const v of sec.vars!) {
      const variable = btf.get(v.type);
      const def = parseMapDef(btf, variable.name, variable.type!, refuse);
      maps.set(variable.name, def);
      // libbpf fills in DATASEC offsets from the symbol table; clang leaves them right, but be safe.
      const sym = elf.symbols.find((s) => s.name === variable.name && s.shndx === mapsSection.index);
      mapAtOffset.set(sym ? sym.value : v.offset, variable.name);
    }
  }
  for (const s of elf.sections) {
    if (!isDataSection(s.name) || (s.flags & SHF.ALLOC) === 0 || s.size === 0) continue;
    const rodata = s.name.startsWith('.rodata');
    if (s.size > MAX_DATA_SECTION) throw refuse(`section ${s.name} is ${s.size} bytes, more than the ${MAX_DATA_SECTION} bytes a map value can hold`);
    maps.set(s.name, {
      name: s.name,
      type: 'array',
      keySize: 4,
      valueSize: s.size,
      maxEntries: 1,
      flags: rodata ? BPF_F_RDONLY_PROG : 0,
      initial: s.type === SHT.NOBITS ? new Uint8Array(s.size) : new Uint8Array(s.data),
      freeze: rodata,
    });
  }

  const programs: ObjectProgram[] = [];
  for (const sym of elf.symbols) {
    const sec = elf.sections[sym.shndx];
    if (sym.type !== STT.FUNC || sym.shndx === SHN_UNDEF || sym.shndx >= SHN_ABS || !sec || (sec.flags & SHF.EXECINSTR) === 0) continue;
    if (sec.name === '.text' || sym.bind === 0 /* local: a static subprogram */) continue;
    const t = programTypeOf(sec.name);
    programs.push({ name: sym.name, section: sec.name, type: t?.type, flags: t?.flags ?? 0 });
  }

  return {
    file,
    license,
    maps,
    programs,
    link: (name) => linkProgram(elf, file, programs, maps, mapAtOffset, name),
  };
}

function cString(data: Uint8Array): string {
  const end = data.indexOf(0);
  return new TextDecoder().decode(data.subarray(0, end < 0 ? data.length : end));
}

/** A `.maps` variable's struct: each member a number encoded as `int (*name)[N]`, or a pointer to the key/value type. */
function parseMapDef(btf: Btf, name: string, typeId: number, refuse: (what: string, hint?: string) => Error): ObjectMap {
  const st = btf.skipModifiers(typeId);
  if (st.kind !== KIND.STRUCT) throw refuse(`map ${name} in .maps is a ${kindName(st.kind)}, not a struct`);
  const num = (member: string, id: number): number => {
    const p = btf.skipModifiers(id);
    const arr = p.kind === KIND.PTR ? btf.skipModifiers(p.type!) : undefined;
    if (!arr || arr.kind !== KIND.ARRAY) throw refuse(`map ${name}: member ${member} is not __uint(${member}, N)`);
    return arr.array!.nelems;
  };
  const sizeOfPointee = (member: string, id: number): number => {
    const p = btf.skipModifiers(id);
    if (p.kind !== KIND.PTR) throw refuse(`map ${name}: member ${member} is not __type(${member}, T)`);
    return btf.sizeOf(p.type!);
  };
  let typeNumber: number | undefined;
  let keySize: number | undefined;
  let valueSize: number | undefined;
  let maxEntries: number | undefined;
  let flags = 0;
  for (const m of st.members!) {
    switch (m.name) {
      case 'type': typeNumber = num(m.name, m.type); break;
      case 'max_entries': maxEntries = num(m.name, m.type); break;
      case 'key_size': keySize = num(m.name, m.type); break;
      case 'value_size': valueSize = num(m.name, m.type); break;
      case 'key': keySize = sizeOfPointee(m.name, m.type); break;
      case 'value': valueSize = sizeOfPointee(m.name, m.type); break;
      case 'map_flags': flags = num(m.name, m.type); break;
      case 'numa_node': break;
      case 'pinning':
        if (num(m.name, m.type) !== 0) throw refuse(`map ${name} asks to be pinned (__uint(pinning, ...)), which netmangle load does not do`, 'remove the pinning attribute');
        break;
      default:
        throw refuse(`map ${name} uses "${m.name}", which netmangle load does not support (only type, key, value, key_size, value_size, max_entries, map_flags)`);
    }
  }
  if (typeNumber === undefined) throw refuse(`map ${name} has no type`);
  const type = nameOf(MAP_TYPES, typeNumber) as MapType;
  if (!SUPPORTED_MAP_TYPES.has(type)) {
    throw refuse(`map ${name} has type ${type}, which netmangle load does not support`, `supported: ${[...SUPPORTED_MAP_TYPES].join(', ')}`);
  }
  if (maxEntries === undefined) throw refuse(`map ${name} has no max_entries`);
  if (type === 'ringbuf') return { name, type, keySize: 0, valueSize: 0, maxEntries, flags };
  if (keySize === undefined || valueSize === undefined) throw refuse(`map ${name} lacks a key or value size`);
  return { name, type, keySize, valueSize, maxEntries, flags };
}

/** CO-RE relocations (.BTF.ext core_relo records) need the kernel's BTF matched against the object's: refused. */
function checkNoCoRe(elf: ElfFile, refuse: (what: string, hint?: string) => Error): void {
  const ext = elf.section('.BTF.ext');
  if (!ext || ext.data.length < 32) return;
  const v = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.byteLength);
  const hdrLen = v.getUint32(4, true);
  if (hdrLen < 32) return;
  const off = hdrLen + v.getUint32(24, true);
  const len = v.getUint32(28, true);
  if (len <= 4) return;
  if (off + len > ext.data.length) throw refuse(`its .BTF.ext section is malformed: the CO-RE records (${len} bytes at ${off}) run past its ${ext.data.length} bytes`);
  // After the record size, per section: name offset, record count, records.
  const recSize = v.getUint32(off, true);
  for (let p = off + 4; p + 8 <= off + len;) {
    if (recSize === 0) break;
    const count = v.getUint32(p + 4, true);
    if (count > 0) {
      throw refuse('uses CO-RE relocations (BPF_CORE_READ, preserve_access_index), which netmangle load does not perform', 'load it with bpftool or libbpf, or access fields without CO-RE');
    }
    p += 8 + count * recSize;
  }
}

interface Func {
  section: ElfSection;
  name: string;
  /** Slots within the section. */
  start: number;
  end: number;
}

function linkProgram(
  elf: ElfFile, file: string, programs: ObjectProgram[], maps: Map<string, ObjectMap>, mapAtOffset: Map<number, string>, wanted: string,
): LinkedProgram {
  const refuse = (what: string, hint?: string) => new NetmangleError(`${file}: program ${wanted}: ${what}`, { hint });
  const prog = programs.find((p) => p.name === wanted);
  if (!prog) throw new NetmangleError(`${file} has no program ${wanted}`, { hint: `its programs: ${programs.map((p) => p.name).join(', ') || 'none'}` });
  if (!prog.type) throw refuse(`section "${prog.section}" names no program type netmangle loads`, 'use SEC("xdp") or SEC("tc")');

  // Every function in every executable section, by (section, start slot).
  const funcs: Func[] = [];
  for (const s of elf.symbols) {
    const sec = elf.sections[s.shndx];
    if (s.type !== STT.FUNC || !sec || s.shndx >= SHN_ABS || (sec.flags & SHF.EXECINSTR) === 0) continue;
    const size = s.size > 0 ? s.size : sec.size - s.value;
    if (s.value % 8 !== 0 || size % 8 !== 0 || size < 0 || s.value + size > sec.size) {
      throw refuse(`function ${s.name || `symbol ${s.index}`} (bytes ${s.value} to ${s.value + size} of section ${sec.name}, ${sec.size} bytes) is not whole instructions inside its section`);
    }
    funcs.push({ section: sec, name: s.name, start: s.value / 8, end: (s.value + size) / 8 });
  }
  const funcAt = (section: number, slot: number) => funcs.find((f) => f.section.index === section && f.start === slot);
  const main = funcs.find((f) => f.name === wanted && f.section.name === prog.section);
  if (!main) throw refuse(`its symbol is not a function of section ${prog.section}`);

  const relocCache = new Map<number, Map<number, { sym: ElfSymbol; type: number }>>();
  const relocsOf = (section: number) => {
    let m = relocCache.get(section);
    if (!m) {
      m = new Map();
      for (const r of elf.relocationsFor(section)) m.set(r.offset, { sym: elf.symbols[r.symbol]!, type: r.type });
      relocCache.set(section, m);
    }
    return m;
  };

  const out: Insn[] = [];
  const mapRefs: MapRef[] = [];
  const used = new Set<string>();
  const placed = new Map<Func, number>(); // function → first slot in the output
  const calls: Array<{ index: number; slot: number; target: Func }> = [];
  const queue: Func[] = [main];
  let outSlot = 0;
  while (queue.length > 0) {
    const fn = queue.shift()!;
    if (placed.has(fn)) continue;
    placed.set(fn, outSlot);
    let insns: Insn[];
    try {
      insns = decode(fn.section.data.subarray(fn.start * 8, fn.end * 8));
    } catch (err) {
      if (err instanceof DecodeError) throw refuse(`function ${fn.name} in section ${fn.section.name}: ${err.message}`);
      throw err;
    }
    const relocs = relocsOf(fn.section.index);
    let slot = fn.start;
    for (const original of insns) {
      const insn = { ...original };
      const reloc = relocs.get(slot * 8);
      const index = out.length;
      if (insn.code === LD_IMM64 && reloc) {
        const { sym } = reloc;
        if (sym.shndx === SHN_UNDEF) throw refuse(`refers to the extern symbol ${sym.name} (a kfunc or extern variable), which netmangle load does not resolve`);
        const target = elf.sections[sym.shndx];
        if (target && target.name === '.maps') {
          const map = mapAtOffset.get(sym.value + (sym.type === STT.SECTION ? insn.imm : 0));
          if (!map) throw refuse(`instruction ${slot} refers to an unknown map at offset ${sym.value} of .maps`);
          mapRefs.push({ index, map, kind: 'fd', offset: 0 });
          used.add(map);
        } else if (target && maps.has(target.name)) {
          mapRefs.push({ index, map: target.name, kind: 'value', offset: sym.value + insn.imm });
          used.add(target.name);
        } else if (target && (target.flags & SHF.EXECINSTR) !== 0) {
          throw refuse('passes a function as a callback (bpf_loop, bpf_for_each_map_elem ...), which netmangle load does not support');
        } else {
          throw refuse(`instruction ${slot} refers to ${sym.name || 'a symbol'} in section "${target?.name ?? sym.shndx}", which is neither .maps nor global data`);
        }
        insn.src = 0;
        insn.imm = 0;
        insn.imm2 = 0;
      } else if (insn.code === BPF_CALL_CODE && insn.src === BPF_PSEUDO_CALL) {
        let target: Func | undefined;
        if (reloc) {
          if (reloc.sym.shndx === SHN_UNDEF) throw refuse(`calls the extern function ${reloc.sym.name}, which netmangle load does not resolve`);
          target = funcAt(reloc.sym.shndx, reloc.sym.value / 8 + insn.imm + 1);
        } else {
          target = funcAt(fn.section.index, slot + insn.imm + 1);
        }
        if (!target) throw refuse(`instruction ${slot} calls into the middle of a function (no function symbol at its target)`);
        calls.push({ index, slot: outSlot, target });
        queue.push(target);
      } else if (insn.code === BPF_CALL_CODE && insn.src === BPF_PSEUDO_KFUNC_CALL) {
        throw refuse(`calls the kernel function ${reloc?.sym.name ?? '(unknown)'} (a kfunc), which netmangle load does not resolve`);
      } else if (insn.code === LD_IMM64 && insn.src === BPF_PSEUDO_FUNC) {
        throw refuse('passes a function as a callback, which netmangle load does not support');
      } else if (reloc && reloc.type !== R_BPF.NONE) {
        throw refuse(`instruction ${slot} has a relocation of type ${reloc.type} against ${reloc.sym.name || 'a section'}, which netmangle load does not handle`);
      }
      out.push(insn);
      const width = insn.code === LD_IMM64 ? 2 : 1;
      slot += width;
      outSlot += width;
    }
  }
  for (const c of calls) out[c.index]!.imm = placed.get(c.target)! - (c.slot + 1);
  return { ...prog, type: prog.type, insns: out, mapRefs, usesMaps: [...used] };
}
