/**
 * ELF64 relocatable objects for the BPF target (little-endian, e_machine EM_BPF = 247), the
 * container clang writes and libbpf, iproute2 and bpftool read.
 *
 * The writer lays sections out in the order they were added, then `.rel<name>` sections,
 * `.symtab` and `.strtab` (one string table serves section and symbol names, as clang does).
 * The reader is the inverse, plus checks that turn a wrong file into one clear message.
 */
import { NetmangleError } from '../errors.js';

export const EM_BPF = 247;
export const ET_REL = 1;

export const SHT = { NULL: 0, PROGBITS: 1, SYMTAB: 2, STRTAB: 3, RELA: 4, NOBITS: 8, REL: 9 } as const;
export const SHF = { WRITE: 0x1, ALLOC: 0x2, EXECINSTR: 0x4, INFO_LINK: 0x40 } as const;
export const STB = { LOCAL: 0, GLOBAL: 1, WEAK: 2 } as const;
export const STT = { NOTYPE: 0, OBJECT: 1, FUNC: 2, SECTION: 3, FILE: 4 } as const;
export const SHN_UNDEF = 0;
export const SHN_ABS = 0xfff1;

/** BPF relocation types (llvm's names; readelf prints R_BPF_64_64 as R_BPF_INSN_64 in old binutils). */
export const R_BPF = { NONE: 0, R_64_64: 1, ABS64: 2, ABS32: 3, NODYLD32: 4, R_64_32: 10 } as const;

const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;
const REL_SIZE = 16;

export interface SectionOptions {
  type?: number;
  flags?: number;
  align?: number;
  entsize?: number;
  /** For SHT_NOBITS: the size the section occupies in memory. */
  size?: number;
}

export interface SymbolHandle {
  readonly name: string;
}

interface WSection {
  name: string;
  type: number;
  flags: number;
  align: number;
  entsize: number;
  data: Uint8Array;
  size: number;
  link: number;
  info: number;
}

interface WSymbol extends SymbolHandle {
  section: number;
  value: number;
  size: number;
  type: number;
  bind: number;
}

/** Builds an ELF64 relocatable BPF object. */
export class ElfWriter {
  private readonly sections: WSection[] = [];
  private readonly symbols: WSymbol[] = [];
  private readonly relocs = new Map<number, Array<{ offset: number; symbol: WSymbol; type: number }>>();
  private readonly sectionSymbols = new Map<number, WSymbol>();

  /** Adds a section; returns its index in the final file (sections keep their order, from 1). */
  addSection(name: string, data: Uint8Array, opts: SectionOptions = {}): number {
    this.sections.push({
      name,
      type: opts.type ?? SHT.PROGBITS,
      flags: opts.flags ?? 0,
      align: opts.align ?? 1,
      entsize: opts.entsize ?? 0,
      data,
      size: opts.type === SHT.NOBITS ? (opts.size ?? 0) : data.length,
      link: 0,
      info: 0,
    });
    return this.sections.length; // index 0 is the null section
  }

  addSymbol(sym: { name: string; section: number; value?: number; size?: number; type: number; bind: number }): SymbolHandle {
    const s: WSymbol = { name: sym.name, section: sym.section, value: sym.value ?? 0, size: sym.size ?? 0, type: sym.type, bind: sym.bind };
    this.symbols.push(s);
    return s;
  }

  /** The STT_SECTION symbol of a section (made on first use), for relocations against it. */
  sectionSymbol(section: number): SymbolHandle {
    let s = this.sectionSymbols.get(section);
    if (!s) {
      s = { name: '', section, value: 0, size: 0, type: STT.SECTION, bind: STB.LOCAL };
      this.sectionSymbols.set(section, s);
      this.symbols.push(s);
    }
    return s;
  }

  /** A relocation at byte `offset` of `section` against `symbol`. */
  addRelocation(section: number, offset: number, symbol: SymbolHandle, type: number): void {
    const list = this.relocs.get(section) ?? [];
    list.push({ offset, symbol: symbol as WSymbol, type });
    this.relocs.set(section, list);
  }

  /** The object file's bytes. */
  finish(): Uint8Array {
    const strtab = new StringTable();
    const all: WSection[] = [{ name: '', type: SHT.NULL, flags: 0, align: 0, entsize: 0, data: new Uint8Array(0), size: 0, link: 0, info: 0 }, ...this.sections];
    // Locals precede globals in .symtab (sh_info is the first global's index).
    const ordered = [...this.symbols.filter((s) => s.bind === STB.LOCAL), ...this.symbols.filter((s) => s.bind !== STB.LOCAL)];
    const firstGlobal = 1 + ordered.filter((s) => s.bind === STB.LOCAL).length;
    const symIndex = new Map<WSymbol, number>(ordered.map((s, i) => [s, i + 1]));
    const symtabIndex = all.length + this.relocs.size;
    const strtabIndex = symtabIndex + 1;

    for (const [target, list] of [...this.relocs.entries()].sort((a, b) => a[0] - b[0])) {
      const data = new Uint8Array(list.length * REL_SIZE);
      const dv = new DataView(data.buffer);
      list.forEach((r, i) => {
        const idx = symIndex.get(r.symbol);
        if (idx === undefined) throw new Error('relocation against a symbol of another writer');
        dv.setBigUint64(i * REL_SIZE, BigInt(r.offset), true);
        dv.setBigUint64(i * REL_SIZE + 8, (BigInt(idx) << 32n) | BigInt(r.type), true);
      });
      all.push({ name: `.rel${all[target]!.name}`, type: SHT.REL, flags: SHF.INFO_LINK, align: 8, entsize: REL_SIZE, data, size: data.length, link: symtabIndex, info: target });
    }

    const symData = new Uint8Array((ordered.length + 1) * SYM_SIZE);
    const sv = new DataView(symData.buffer);
    ordered.forEach((s, i) => {
      const p = (i + 1) * SYM_SIZE;
      sv.setUint32(p, s.type === STT.SECTION ? 0 : strtab.add(s.name), true);
      sv.setUint8(p + 4, (s.bind << 4) | s.type);
      sv.setUint8(p + 5, 0);
      sv.setUint16(p + 6, s.section, true);
      sv.setBigUint64(p + 8, BigInt(s.value), true);
      sv.setBigUint64(p + 16, BigInt(s.size), true);
    });
    all.push({ name: '.symtab', type: SHT.SYMTAB, flags: 0, align: 8, entsize: SYM_SIZE, data: symData, size: symData.length, link: strtabIndex, info: firstGlobal });
    const names = all.map((s) => (s.type === SHT.NULL ? 0 : strtab.add(s.name)));
    const strIndexName = strtab.add('.strtab');
    const strData = strtab.bytes();
    all.push({ name: '.strtab', type: SHT.STRTAB, flags: 0, align: 1, entsize: 0, data: strData, size: strData.length, link: 0, info: 0 });
    names.push(strIndexName);

    // Layout: header, section contents (aligned), section header table.
    let offset = EHDR_SIZE;
    const offsets: number[] = [];
    for (const s of all) {
      if (s.type === SHT.NULL) {
        offsets.push(0);
        continue;
      }
      const align = Math.max(1, s.align);
      offset = Math.ceil(offset / align) * align;
      offsets.push(offset);
      if (s.type !== SHT.NOBITS) offset += s.data.length;
    }
    offset = Math.ceil(offset / 8) * 8;
    const shoff = offset;
    const out = new Uint8Array(shoff + all.length * SHDR_SIZE);
    const v = new DataView(out.buffer);
    out.set([0x7f, 0x45, 0x4c, 0x46, 2 /* ELFCLASS64 */, 1 /* ELFDATA2LSB */, 1 /* EV_CURRENT */, 0 /* ELFOSABI_NONE */]);
    v.setUint16(16, ET_REL, true);
    v.setUint16(18, EM_BPF, true);
    v.setUint32(20, 1, true);
    v.setBigUint64(40, BigInt(shoff), true);
    v.setUint16(52, EHDR_SIZE, true);
    v.setUint16(58, SHDR_SIZE, true);
    v.setUint16(60, all.length, true);
    v.setUint16(62, strtabIndex, true);
    all.forEach((s, i) => {
      if (s.type !== SHT.NOBITS && s.data.length > 0) out.set(s.data, offsets[i]!);
      const p = shoff + i * SHDR_SIZE;
      v.setUint32(p, names[i]!, true);
      v.setUint32(p + 4, s.type, true);
      v.setBigUint64(p + 8, BigInt(s.flags), true);
      v.setBigUint64(p + 24, BigInt(offsets[i]!), true);
      v.setBigUint64(p + 32, BigInt(s.size), true);
      v.setUint32(p + 40, s.link, true);
      v.setUint32(p + 44, s.info, true);
      v.setBigUint64(p + 48, BigInt(s.align), true);
      v.setBigUint64(p + 56, BigInt(s.entsize), true);
    });
    return out;
  }
}

/** A NUL-separated string table starting with the empty string; equal strings are stored once. */
export class StringTable {
  private readonly parts: Uint8Array[] = [new Uint8Array(1)];
  private length = 1;
  private readonly seen = new Map<string, number>([['', 0]]);

  add(s: string): number {
    const known = this.seen.get(s);
    if (known !== undefined) return known;
    const bytes = new TextEncoder().encode(s + '\0');
    const at = this.length;
    this.parts.push(bytes);
    this.length += bytes.length;
    this.seen.set(s, at);
    return at;
  }

  bytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    let p = 0;
    for (const b of this.parts) {
      out.set(b, p);
      p += b.length;
    }
    return out;
  }
}

// ------------------------------------------------------------------------------------ reader

export interface ElfSection {
  index: number;
  name: string;
  type: number;
  flags: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  align: number;
  entsize: number;
  /** The contents (empty for SHT_NOBITS). */
  data: Uint8Array;
}

export interface ElfSymbol {
  index: number;
  name: string;
  value: number;
  size: number;
  type: number;
  bind: number;
  /** Section index, or SHN_UNDEF / SHN_ABS. */
  shndx: number;
}

export interface ElfRelocation {
  offset: number;
  symbol: number;
  type: number;
}

export interface ElfFile {
  type: number;
  machine: number;
  sections: ElfSection[];
  symbols: ElfSymbol[];
  section(name: string): ElfSection | undefined;
  /** The relocations applying to section `target` (from its SHT_REL sections). */
  relocationsFor(target: number): ElfRelocation[];
}

/** Parses an ELF64 little-endian object. `what` names the file in error messages. */
export function readElf(bytes: Uint8Array, what = 'the object'): ElfFile {
  const bad = (why: string) => new NetmangleError(`${what} is not a BPF object file: ${why}`, {
    hint: 'give an object built with clang -target bpf -c, or with netmangle build',
  });
  if (bytes.length < EHDR_SIZE || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) throw bad('no ELF header');
  if (bytes[4] !== 2) throw bad('not a 64-bit ELF file');
  if (bytes[5] !== 1) throw bad('not little-endian (big-endian BPF objects come from -target bpfeb; use -target bpf)');
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = v.getUint16(16, true);
  const machine = v.getUint16(18, true);
  if (machine !== EM_BPF) throw bad(`its machine is ${machine}, not Linux BPF (${EM_BPF})`);
  if (type !== ET_REL) throw bad(`ELF type ${type}, not a relocatable object (1)`);
  const shoff = Number(v.getBigUint64(40, true));
  const shentsize = v.getUint16(58, true);
  const shnum = v.getUint16(60, true);
  const shstrndx = v.getUint16(62, true);
  if (shentsize !== SHDR_SIZE || shoff + shnum * SHDR_SIZE > bytes.length) throw bad('the section header table is cut short or malformed');
  if (shstrndx >= shnum) throw bad(`e_shstrndx is ${shstrndx}, but the file has ${shnum} sections`);

  const raw = Array.from({ length: shnum }, (_, i) => {
    const p = shoff + i * SHDR_SIZE;
    const s = {
      index: i,
      nameOff: v.getUint32(p, true),
      type: v.getUint32(p + 4, true),
      flags: Number(v.getBigUint64(p + 8, true)),
      offset: Number(v.getBigUint64(p + 24, true)),
      size: Number(v.getBigUint64(p + 32, true)),
      link: v.getUint32(p + 40, true),
      info: v.getUint32(p + 44, true),
      align: Number(v.getBigUint64(p + 48, true)),
      entsize: Number(v.getBigUint64(p + 56, true)),
    };
    if (s.type !== SHT.NOBITS && s.type !== SHT.NULL && s.offset + s.size > bytes.length) throw bad(`section ${i} extends past the end of the file`);
    return s;
  });
  /** The string at `off` of a string table section; `what` says whose name it is, for errors. */
  const strAt = (table: { index: number; type: number; offset: number; size: number }, off: number, what: string): string => {
    if (table.type !== SHT.STRTAB) throw bad(`${what} is read from section ${table.index}, which is not a string table (type ${table.type})`);
    if (off >= table.size) throw bad(`${what} is at offset ${off} of section ${table.index}, a string table of ${table.size} bytes`);
    let end = table.offset + off;
    const stop = table.offset + table.size;
    while (end < stop && bytes[end] !== 0) end++;
    return new TextDecoder().decode(bytes.subarray(table.offset + off, end));
  };
  const shstr = raw[shstrndx]!;
  if (shnum > 0 && shstr.type !== SHT.STRTAB) throw bad(`e_shstrndx is ${shstrndx}, a section of type ${shstr.type}, not the string table of section names`);
  const sections: ElfSection[] = raw.map((s) => ({
    index: s.index,
    name: s.type === SHT.NULL ? '' : strAt(shstr, s.nameOff, `the name of section ${s.index}`),
    type: s.type,
    flags: s.flags,
    offset: s.offset,
    size: s.size,
    link: s.link,
    info: s.info,
    align: s.align,
    entsize: s.entsize,
    data: s.type === SHT.NOBITS || s.type === SHT.NULL ? new Uint8Array(0) : bytes.subarray(s.offset, s.offset + s.size),
  }));

  // Sizes of tables made of fixed-size entries, and of instructions: whole entries only.
  for (const s of sections) {
    const entry = s.type === SHT.SYMTAB ? SYM_SIZE : s.type === SHT.REL ? REL_SIZE : s.type === SHT.RELA ? 24 : (s.flags & SHF.EXECINSTR) !== 0 && s.type === SHT.PROGBITS ? 8 : 0;
    if (entry > 0 && s.size % entry !== 0) {
      const what = entry === 8 ? 'instructions, 8 bytes each' : `entries of ${entry} bytes`;
      throw bad(`section ${s.index} (${s.name || 'unnamed'}) is ${s.size} bytes, not a whole number of ${what}`);
    }
    if ((s.type === SHT.REL || s.type === SHT.RELA) && (s.info >= shnum || s.link >= shnum || sections[s.link]!.type !== SHT.SYMTAB)) {
      throw bad(`section ${s.index} (${s.name || 'unnamed'}) holds relocations, but its target (section ${s.info}) or symbol table (section ${s.link}) is not a valid section`);
    }
  }
  const symtab = sections.find((s) => s.type === SHT.SYMTAB);
  const symbols: ElfSymbol[] = [];
  if (symtab) {
    const names = sections[symtab.link];
    if (!names) throw bad(`the symbol table (section ${symtab.index}) names section ${symtab.link} for its strings, but the file has ${shnum} sections`);
    const sd = new DataView(symtab.data.buffer, symtab.data.byteOffset, symtab.data.byteLength);
    for (let i = 0; i * SYM_SIZE + SYM_SIZE <= symtab.data.length; i++) {
      const p = i * SYM_SIZE;
      const info = sd.getUint8(p + 4);
      const shndx = sd.getUint16(p + 6, true);
      const t = info & 0xf;
      symbols.push({
        index: i,
        name: t === STT.SECTION ? (sections[shndx]?.name ?? '') : i === 0 ? '' : strAt(names, sd.getUint32(p, true), `the name of symbol ${i}`),
        type: t,
        bind: info >> 4,
        shndx,
        value: Number(sd.getBigUint64(p + 8, true)),
        size: Number(sd.getBigUint64(p + 16, true)),
      });
    }
  }

  return {
    type,
    machine,
    sections,
    symbols,
    section: (name) => sections.find((s) => s.name === name),
    relocationsFor(target: number): ElfRelocation[] {
      const out: ElfRelocation[] = [];
      for (const s of sections) {
        if (s.info !== target || (s.type !== SHT.REL && s.type !== SHT.RELA)) continue;
        const size = s.type === SHT.REL ? REL_SIZE : 24;
        const rd = new DataView(s.data.buffer, s.data.byteOffset, s.data.byteLength);
        for (let p = 0; p + size <= s.data.length; p += size) {
          const info = rd.getBigUint64(p + 8, true);
          const symbol = Number(info >> 32n);
          if (symbol >= symbols.length) {
            throw bad(`relocation ${p / size} of section ${s.index} (${s.name || 'unnamed'}) refers to symbol ${symbol}, but the symbol table has ${symbols.length}`);
          }
          out.push({ offset: Number(rd.getBigUint64(p, true)), symbol, type: Number(info & 0xffffffffn) });
        }
      }
      return out;
    },
  };
}
