/**
 * BTF, the BPF Type Format (include/uapi/linux/btf.h): the `.BTF` section that describes the
 * types of an object's maps and globals. libbpf 1.x reads a map's shape from the BTF of its
 * variable in `.maps`, so writing objects needs an encoder; loading clang's objects needs a
 * decoder that can answer "what size is this type" and "what are this struct's members".
 *
 * Layout: a 24-byte header (magic 0xeB9F, version 1, flags, hdr_len, type_off, type_len,
 * str_off, str_len), then the type records (type ids count from 1; 0 is void), then the strings.
 */
import { NetmangleError } from '../errors.js';
import { StringTable } from './elf.js';

export const BTF_MAGIC = 0xeb9f;

export const KIND = {
  UNKN: 0, INT: 1, PTR: 2, ARRAY: 3, STRUCT: 4, UNION: 5, ENUM: 6, FWD: 7, TYPEDEF: 8, VOLATILE: 9, CONST: 10,
  RESTRICT: 11, FUNC: 12, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, FLOAT: 16, DECL_TAG: 17, TYPE_TAG: 18, ENUM64: 19,
} as const;

const KIND_NAMES = Object.fromEntries(Object.entries(KIND).map(([k, v]) => [v, k.toLowerCase()])) as Record<number, string>;

export const BTF_INT_SIGNED = 1;
export const BTF_VAR_STATIC = 0;
export const BTF_VAR_GLOBAL_ALLOCATED = 1;
export const BTF_FUNC_STATIC = 0;
export const BTF_FUNC_GLOBAL = 1;

export interface BtfMember {
  name: string;
  type: number;
  /** Offset in bits (for a kind_flag struct: low 24 bits offset, high 8 the bitfield size). */
  bitOffset: number;
}

export interface BtfParam {
  name: string;
  type: number;
}

export interface BtfVarInfo {
  type: number;
  offset: number;
  size: number;
}

/** One decoded type record. Fields beyond kind/name/info apply to some kinds only. */
export interface BtfType {
  id: number;
  kind: number;
  name: string;
  vlen: number;
  kindFlag: boolean;
  /** INT, STRUCT, UNION, ENUM, DATASEC, FLOAT: the size in bytes. */
  size?: number;
  /** PTR, TYPEDEF, CONST, VOLATILE, RESTRICT, FUNC, VAR, TYPE_TAG, DECL_TAG: the referred type; FUNC_PROTO: return type. */
  type?: number;
  /** INT: encoding bits, bit offset, bit count. */
  int?: { encoding: number; offset: number; bits: number };
  array?: { type: number; indexType: number; nelems: number };
  members?: BtfMember[];
  params?: BtfParam[];
  /** VAR: linkage. */
  linkage?: number;
  vars?: BtfVarInfo[];
}

// ------------------------------------------------------------------------------------ encoder

/** Builds a `.BTF` section type by type; each method returns the new type's id. */
export class BtfBuilder {
  private readonly records: number[][] = [];
  private readonly strings = new StringTable();

  private push(words: number[]): number {
    this.records.push(words);
    return this.records.length;
  }

  private info(kind: number, vlen: number, kindFlag = false): number {
    return ((kindFlag ? 1 : 0) << 31 | kind << 24 | (vlen & 0xffff)) >>> 0;
  }

  int(name: string, size: number, signed: boolean): number {
    return this.push([this.strings.add(name), this.info(KIND.INT, 0), size, ((signed ? BTF_INT_SIGNED : 0) << 24) | (size * 8)]);
  }

  ptr(type: number): number {
    return this.push([0, this.info(KIND.PTR, 0), type]);
  }

  array(elem: number, indexType: number, nelems: number): number {
    return this.push([0, this.info(KIND.ARRAY, 0), 0, elem, indexType, nelems]);
  }

  struct(name: string, size: number, members: BtfMember[]): number {
    const words = [this.strings.add(name), this.info(KIND.STRUCT, members.length), size];
    for (const m of members) words.push(this.strings.add(m.name), m.type, m.bitOffset);
    return this.push(words);
  }

  /** A forward declaration of `struct name`. */
  fwdStruct(name: string): number {
    return this.push([this.strings.add(name), this.info(KIND.FWD, 0), 0]);
  }

  typedef(name: string, type: number): number {
    return this.push([this.strings.add(name), this.info(KIND.TYPEDEF, 0), type]);
  }

  funcProto(ret: number, params: BtfParam[]): number {
    const words = [0, this.info(KIND.FUNC_PROTO, params.length), ret];
    for (const p of params) words.push(this.strings.add(p.name), p.type);
    return this.push(words);
  }

  func(name: string, proto: number, linkage = BTF_FUNC_GLOBAL): number {
    return this.push([this.strings.add(name), this.info(KIND.FUNC, linkage), proto]);
  }

  variable(name: string, type: number, linkage = BTF_VAR_GLOBAL_ALLOCATED): number {
    return this.push([this.strings.add(name), this.info(KIND.VAR, 0), type, linkage]);
  }

  datasec(name: string, size: number, vars: BtfVarInfo[]): number {
    const words = [this.strings.add(name), this.info(KIND.DATASEC, vars.length), size];
    for (const v of vars) words.push(v.type, v.offset, v.size);
    return this.push(words);
  }

  encode(): Uint8Array {
    const typeLen = this.records.reduce((n, r) => n + r.length * 4, 0);
    const str = this.strings.bytes();
    const out = new Uint8Array(24 + typeLen + str.length);
    const v = new DataView(out.buffer);
    v.setUint16(0, BTF_MAGIC, true);
    v.setUint8(2, 1);
    v.setUint8(3, 0);
    v.setUint32(4, 24, true);
    v.setUint32(8, 0, true);
    v.setUint32(12, typeLen, true);
    v.setUint32(16, typeLen, true);
    v.setUint32(20, str.length, true);
    let p = 24;
    for (const r of this.records) {
      for (const w of r) {
        v.setUint32(p, w >>> 0, true);
        p += 4;
      }
    }
    out.set(str, p);
    return out;
  }
}

// ------------------------------------------------------------------------------------ decoder

export class Btf {
  /** types[id]; types[0] is void. */
  readonly types: BtfType[];

  constructor(types: BtfType[]) {
    this.types = types;
  }

  get(id: number): BtfType {
    const t = this.types[id];
    if (!t) throw new NetmangleError(`BTF type id ${id} does not exist (the object's .BTF has ${this.types.length - 1} types)`);
    return t;
  }

  /** Follows typedef, const, volatile, restrict and type tags to the type underneath. */
  skipModifiers(id: number): BtfType {
    let t = this.get(id);
    for (let depth = 0; depth < 64; depth++) {
      if (t.kind !== KIND.TYPEDEF && t.kind !== KIND.CONST && t.kind !== KIND.VOLATILE && t.kind !== KIND.RESTRICT && t.kind !== KIND.TYPE_TAG) return t;
      t = this.get(t.type!);
    }
    throw new NetmangleError(`BTF type ${id} is a loop of modifiers`);
  }

  /** Size in bytes of a type (as sizeof in C). */
  sizeOf(id: number): number {
    // Arrays multiply as the loop goes down (an array of itself would otherwise recurse forever).
    let scale = 1;
    for (let depth = 0; depth < 64; depth++) {
      const t = this.skipModifiers(id);
      switch (t.kind) {
        case KIND.INT: case KIND.STRUCT: case KIND.UNION: case KIND.ENUM: case KIND.ENUM64: case KIND.DATASEC: case KIND.FLOAT:
          return scale * t.size!;
        case KIND.PTR:
          return scale * 8;
        case KIND.ARRAY:
          scale *= t.array!.nelems;
          id = t.array!.type;
          continue;
        case KIND.VAR:
          id = t.type!;
          continue;
        default:
          throw new NetmangleError(`BTF type ${id} (${kindName(t.kind)}) has no size`);
      }
    }
    throw new NetmangleError(`BTF type ${id} nests too deeply`);
  }

  byName(name: string, kind?: number): BtfType | undefined {
    return this.types.find((t) => t.name === name && (kind === undefined || t.kind === kind));
  }
}

export function kindName(kind: number): string {
  return KIND_NAMES[kind] ?? `kind ${kind}`;
}

/** Decodes a `.BTF` section. */
export function parseBtf(bytes: Uint8Array): Btf {
  const bad = (why: string) => new NetmangleError(`the object's .BTF section is malformed: ${why}`);
  if (bytes.length < 24) throw bad('shorter than its header');
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint16(0, true) !== BTF_MAGIC) throw bad(v.getUint16(0, false) === BTF_MAGIC ? 'big-endian BTF' : 'bad magic');
  const hdrLen = v.getUint32(4, true);
  const typeOff = hdrLen + v.getUint32(8, true);
  const typeLen = v.getUint32(12, true);
  const strOff = hdrLen + v.getUint32(16, true);
  const strLen = v.getUint32(20, true);
  if (typeOff + typeLen > bytes.length || strOff + strLen > bytes.length) throw bad('sections past its end');
  const str = (off: number): string => {
    if (off >= strLen) throw bad(`string offset ${off} beyond the string section`);
    let end = strOff + off;
    while (end < strOff + strLen && bytes[end] !== 0) end++;
    return new TextDecoder().decode(bytes.subarray(strOff + off, end));
  };
  const types: BtfType[] = [{ id: 0, kind: KIND.UNKN, name: '', vlen: 0, kindFlag: false }];
  let p = typeOff;
  const end = typeOff + typeLen;
  const u32 = (): number => {
    if (p + 4 > end) throw bad('a type record is cut short');
    const x = v.getUint32(p, true);
    p += 4;
    return x;
  };
  while (p < end) {
    const nameOff = u32();
    const info = u32();
    const sizeOrType = u32();
    const kind = (info >>> 24) & 0x1f;
    const vlen = info & 0xffff;
    const t: BtfType = { id: types.length, kind, name: str(nameOff), vlen, kindFlag: (info >>> 31) === 1 };
    switch (kind) {
      case KIND.INT: {
        const x = u32();
        t.size = sizeOrType;
        t.int = { encoding: (x >>> 24) & 0xf, offset: (x >>> 16) & 0xff, bits: x & 0xff };
        break;
      }
      case KIND.PTR: case KIND.FWD: case KIND.TYPEDEF: case KIND.VOLATILE: case KIND.CONST: case KIND.RESTRICT:
      case KIND.FUNC: case KIND.TYPE_TAG:
        t.type = sizeOrType;
        break;
      case KIND.FLOAT:
        t.size = sizeOrType;
        break;
      case KIND.ARRAY:
        t.array = { type: u32(), indexType: u32(), nelems: u32() };
        break;
      case KIND.STRUCT: case KIND.UNION:
        t.size = sizeOrType;
        t.members = [];
        for (let i = 0; i < vlen; i++) t.members.push({ name: str(u32()), type: u32(), bitOffset: u32() });
        break;
      case KIND.ENUM:
        t.size = sizeOrType;
        p += 8 * vlen;
        break;
      case KIND.ENUM64:
        t.size = sizeOrType;
        p += 12 * vlen;
        break;
      case KIND.FUNC_PROTO:
        t.type = sizeOrType;
        t.params = [];
        for (let i = 0; i < vlen; i++) t.params.push({ name: str(u32()), type: u32() });
        break;
      case KIND.VAR:
        t.type = sizeOrType;
        t.linkage = u32();
        break;
      case KIND.DATASEC:
        t.size = sizeOrType;
        t.vars = [];
        for (let i = 0; i < vlen; i++) t.vars.push({ type: u32(), offset: u32(), size: u32() });
        break;
      case KIND.DECL_TAG:
        t.type = sizeOrType;
        u32();
        break;
      default:
        throw bad(`type ${t.id} has unknown kind ${kind}`);
    }
    types.push(t);
  }
  return new Btf(types);
}
