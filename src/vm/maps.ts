/**
 * The VM's eBPF maps: array, per-CPU array, hash and LRU hash, with the kernel's update
 * flags and error numbers. Storage is preallocated at creation (as the kernel preallocates
 * hash elements), so a program's lookups and updates allocate nothing: keys are compared
 * bytewise straight from the program's memory, and a value is a stable view that a
 * program's pointer can address.
 *
 * Differences from the kernel, on purpose: the LRU hash evicts the exact least recently
 * used element (the kernel's is approximate, per-CPU lists); updating an existing hash key
 * copies into the existing value in place (the kernel swaps in a new element, so a pointer
 * obtained earlier would still see the old bytes).
 */
import { UsageError } from '../errors.js';

export type VmMapType = 'array' | 'percpu_array' | 'hash' | 'lru_hash';

export interface VmMapSpec {
  type: VmMapType;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** For messages. */
  name?: string;
  /** CPUs modelled by a per-CPU map (default 1). */
  cpus?: number;
}

// Update flags and errnos, as in include/uapi/linux/bpf.h and errno-base.h.
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;
export const ENOENT = 2;
export const E2BIG = 7;
export const EEXIST = 17;
export const EINVAL = 22;

export type MapKey = Uint8Array | number;

function keyBytes(key: MapKey, keySize: number, mapName: string): Uint8Array {
  if (typeof key === 'number') {
    if (keySize !== 4) throw new UsageError(`map ${mapName}: a numeric key needs a 4-byte key, this map's key has ${keySize} bytes`);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, key, true);
    return b;
  }
  if (key.length !== keySize) throw new UsageError(`map ${mapName}: key has ${key.length} bytes, the map's key size is ${keySize}`);
  return key;
}

export abstract class VmMap {
  readonly type: VmMapType;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly name: string;
  readonly cpus: number;

  constructor(spec: VmMapSpec) {
    const name = spec.name ?? spec.type;
    for (const [what, v] of [['key size', spec.keySize], ['value size', spec.valueSize], ['max entries', spec.maxEntries]] as const) {
      if (!Number.isInteger(v) || v <= 0) throw new UsageError(`map ${name}: ${what} must be a positive integer, got ${v}`);
    }
    if ((spec.type === 'array' || spec.type === 'percpu_array') && spec.keySize !== 4) {
      throw new UsageError(`map ${name}: an ${spec.type} map has 4-byte keys, got ${spec.keySize}`);
    }
    const cpus = spec.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1) throw new UsageError(`map ${name}: cpus must be a positive integer, got ${cpus}`);
    this.type = spec.type;
    this.keySize = spec.keySize;
    this.valueSize = spec.valueSize;
    this.maxEntries = spec.maxEntries;
    this.name = name;
    this.cpus = spec.type === 'percpu_array' ? cpus : 1;
  }

  // ---- The program's side: keys and values in place in the program's memory, no allocation.

  /** The value for the key at kbuf[koff..], as seen by `cpu`, or null. */
  abstract lookupAt(kbuf: Uint8Array, koff: number, cpu: number): Uint8Array | null;
  /** 0 or a negative errno, as bpf_map_update_elem returns. */
  abstract updateAt(kbuf: Uint8Array, koff: number, vbuf: Uint8Array, voff: number, flags: number, cpu: number): number;
  /** 0 or a negative errno, as bpf_map_delete_elem returns. */
  abstract deleteAt(kbuf: Uint8Array, koff: number): number;
  /** Keys in storage order (copies). */
  abstract keys(): Uint8Array[];
  abstract clear(): void;

  // ---- The caller's side: copies in and out, errors as exceptions.

  /** A copy of the value (CPU `cpu` for per-CPU maps), or undefined. */
  lookup(key: MapKey, cpu = 0): Uint8Array | undefined {
    const k = keyBytes(key, this.keySize, this.name);
    const v = this.lookupAt(k, 0, this.checkCpu(cpu));
    return v ? v.slice() : undefined;
  }

  /** Every CPU's copy of the value (one element for maps that are not per-CPU). */
  lookupAllCpus(key: MapKey): Uint8Array[] | undefined {
    const k = keyBytes(key, this.keySize, this.name);
    if (this.lookupAt(k, 0, 0) === null) return undefined;
    const out: Uint8Array[] = [];
    for (let c = 0; c < this.cpus; c++) out.push(this.lookupAt(k, 0, c)!.slice());
    return out;
  }

  /** Sets the value (on every CPU of a per-CPU map), with the kernel's flags. */
  update(key: MapKey, value: Uint8Array, flags = BPF_ANY): void {
    const k = keyBytes(key, this.keySize, this.name);
    if (value.length !== this.valueSize) throw new UsageError(`map ${this.name}: value has ${value.length} bytes, the map's value size is ${this.valueSize}`);
    for (let c = 0; c < this.cpus; c++) {
      const err = this.updateAt(k, 0, value, 0, c === 0 ? flags : BPF_ANY, c);
      if (err !== 0) throw new UsageError(`map ${this.name}: update failed: ${errnoText(-err)}`);
    }
  }

  /** True if the key was there. */
  delete(key: MapKey): boolean {
    const k = keyBytes(key, this.keySize, this.name);
    const err = this.deleteAt(k, 0);
    if (err === -EINVAL) throw new UsageError(`map ${this.name}: elements of an ${this.type} map cannot be deleted`);
    return err === 0;
  }

  entries(cpu = 0): [Uint8Array, Uint8Array][] {
    return this.keys().map((k) => [k, this.lookupAt(k, 0, cpu)!.slice()]);
  }

  get size(): number {
    return this.keys().length;
  }

  private checkCpu(cpu: number): number {
    if (!Number.isInteger(cpu) || cpu < 0 || cpu >= this.cpus) throw new UsageError(`map ${this.name}: cpu ${cpu} is not one of its ${this.cpus} CPUs`);
    return cpu;
  }
}

function errnoText(e: number): string {
  return e === E2BIG ? 'E2BIG (full, or index beyond max entries)' : e === EEXIST ? 'EEXIST (key exists)' : e === ENOENT ? 'ENOENT (no such key)' : e === EINVAL ? 'EINVAL (bad flags)' : `errno ${e}`;
}

function readU32(b: Uint8Array, off: number): number {
  return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
}

/** Array and per-CPU array: every index exists, values start zeroed, nothing can be deleted. */
export class ArrayMap extends VmMap {
  /** One slab per CPU. */
  private readonly slabs: Uint8Array[];
  /** Value views, made on first use and kept (per CPU). */
  private readonly views: (Uint8Array | undefined)[][];

  constructor(spec: VmMapSpec) {
    super(spec);
    this.slabs = [];
    this.views = [];
    for (let c = 0; c < this.cpus; c++) {
      this.slabs.push(new Uint8Array(this.valueSize * this.maxEntries));
      this.views.push([]);
    }
  }

  valueAt(index: number, cpu: number): Uint8Array {
    const views = this.views[cpu]!;
    let v = views[index];
    if (v === undefined) {
      v = this.slabs[cpu]!.subarray(index * this.valueSize, (index + 1) * this.valueSize);
      views[index] = v;
    }
    return v;
  }

  lookupAt(kbuf: Uint8Array, koff: number, cpu: number): Uint8Array | null {
    const index = readU32(kbuf, koff);
    return index < this.maxEntries ? this.valueAt(index, cpu) : null;
  }

  updateAt(kbuf: Uint8Array, koff: number, vbuf: Uint8Array, voff: number, flags: number, cpu: number): number {
    if (flags > BPF_EXIST || flags < 0) return -EINVAL;
    const index = readU32(kbuf, koff);
    if (index >= this.maxEntries) return -E2BIG;
    if (flags === BPF_NOEXIST) return -EEXIST;
    this.slabs[cpu]!.set(vbuf.subarray(voff, voff + this.valueSize), index * this.valueSize);
    return 0;
  }

  deleteAt(): number {
    return -EINVAL;
  }

  keys(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = 0; i < this.maxEntries; i++) {
      const k = new Uint8Array(4);
      new DataView(k.buffer).setUint32(0, i, true);
      out.push(k);
    }
    return out;
  }

  clear(): void {
    for (const s of this.slabs) s.fill(0);
  }
}

const EMPTY = -1;
const TOMBSTONE = -2;

/**
 * Hash and LRU hash: open addressing (linear probing) over an index of slot numbers, slots
 * preallocated; the LRU order is a doubly linked list through the slots.
 */
export class HashMap extends VmMap {
  private readonly keySlab: Uint8Array;
  private readonly valueSlab: Uint8Array;
  private readonly views: (Uint8Array | undefined)[] = [];
  private index: Int32Array;
  private tombstones = 0;
  private readonly freeSlots: Int32Array;
  private freeCount: number;
  private count = 0;
  private readonly lru: boolean;
  // LRU list: most recent at head.
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private head = -1;
  private tail = -1;

  constructor(spec: VmMapSpec) {
    super(spec);
    this.lru = spec.type === 'lru_hash';
    this.keySlab = new Uint8Array(this.keySize * this.maxEntries);
    this.valueSlab = new Uint8Array(this.valueSize * this.maxEntries);
    let cap = 8;
    while (cap < this.maxEntries * 2) cap *= 2;
    this.index = new Int32Array(cap).fill(EMPTY);
    this.freeSlots = new Int32Array(this.maxEntries);
    for (let i = 0; i < this.maxEntries; i++) this.freeSlots[i] = this.maxEntries - 1 - i;
    this.freeCount = this.maxEntries;
    this.prev = new Int32Array(this.lru ? this.maxEntries : 0);
    this.next = new Int32Array(this.lru ? this.maxEntries : 0);
  }

  private hash(kbuf: Uint8Array, koff: number): number {
    let h = 0x811c9dc5;
    for (let i = 0; i < this.keySize; i++) h = Math.imul(h ^ kbuf[koff + i]!, 0x01000193);
    return h ^ (h >>> 15);
  }

  private keyEquals(slot: number, kbuf: Uint8Array, koff: number): boolean {
    const base = slot * this.keySize;
    const ks = this.keySlab;
    for (let i = 0; i < this.keySize; i++) if (ks[base + i] !== kbuf[koff + i]) return false;
    return true;
  }

  /** Index position holding the key, or -1. */
  private find(kbuf: Uint8Array, koff: number): number {
    const mask = this.index.length - 1;
    for (let p = this.hash(kbuf, koff) & mask; ; p = (p + 1) & mask) {
      const s = this.index[p]!;
      if (s === EMPTY) return -1;
      if (s >= 0 && this.keyEquals(s, kbuf, koff)) return p;
    }
  }

  private valueView(slot: number): Uint8Array {
    let v = this.views[slot];
    if (v === undefined) {
      v = this.valueSlab.subarray(slot * this.valueSize, (slot + 1) * this.valueSize);
      this.views[slot] = v;
    }
    return v;
  }

  private touch(slot: number): void {
    if (!this.lru || this.head === slot) return;
    this.unlink(slot);
    this.pushFront(slot);
  }

  private unlink(slot: number): void {
    const p = this.prev[slot]!, n = this.next[slot]!;
    if (p >= 0) this.next[p] = n; else this.head = n;
    if (n >= 0) this.prev[n] = p; else this.tail = p;
  }

  private pushFront(slot: number): void {
    this.prev[slot] = -1;
    this.next[slot] = this.head;
    if (this.head >= 0) this.prev[this.head] = slot;
    this.head = slot;
    if (this.tail < 0) this.tail = slot;
  }

  lookupAt(kbuf: Uint8Array, koff: number): Uint8Array | null {
    const p = this.find(kbuf, koff);
    if (p < 0) return null;
    const slot = this.index[p]!;
    this.touch(slot);
    return this.valueView(slot);
  }

  updateAt(kbuf: Uint8Array, koff: number, vbuf: Uint8Array, voff: number, flags: number): number {
    if (flags > BPF_EXIST || flags < 0) return -EINVAL;
    const p = this.find(kbuf, koff);
    if (p >= 0) {
      if (flags === BPF_NOEXIST) return -EEXIST;
      const slot = this.index[p]!;
      this.valueSlab.set(vbuf.subarray(voff, voff + this.valueSize), slot * this.valueSize);
      this.touch(slot);
      return 0;
    }
    if (flags === BPF_EXIST) return -ENOENT;
    if (this.freeCount === 0) {
      if (!this.lru) return -E2BIG;
      this.removeSlot(this.tail);
    }
    const slot = this.freeSlots[--this.freeCount]!;
    this.keySlab.set(kbuf.subarray(koff, koff + this.keySize), slot * this.keySize);
    this.valueSlab.set(vbuf.subarray(voff, voff + this.valueSize), slot * this.valueSize);
    this.insertIndex(slot);
    if (this.lru) this.pushFront(slot);
    this.count++;
    return 0;
  }

  private insertIndex(slot: number): void {
    const mask = this.index.length - 1;
    for (let p = this.hash(this.keySlab, slot * this.keySize) & mask; ; p = (p + 1) & mask) {
      const s = this.index[p]!;
      if (s === EMPTY || s === TOMBSTONE) {
        if (s === TOMBSTONE) this.tombstones--;
        this.index[p] = slot;
        return;
      }
    }
  }

  private removeSlot(slot: number): void {
    const p = this.find(this.keySlab, slot * this.keySize);
    this.index[p] = TOMBSTONE;
    this.tombstones++;
    if (this.lru) this.unlink(slot);
    this.freeSlots[this.freeCount++] = slot;
    this.count--;
    // Churn leaves tombstones that lengthen every probe; rebuild the index now and then.
    if (this.tombstones > this.index.length >> 2) this.rebuildIndex();
  }

  private rebuildIndex(): void {
    const old = this.index;
    this.index = new Int32Array(old.length).fill(EMPTY);
    this.tombstones = 0;
    for (const s of old) if (s >= 0) this.insertIndex(s);
  }

  deleteAt(kbuf: Uint8Array, koff: number): number {
    const p = this.find(kbuf, koff);
    if (p < 0) return -ENOENT;
    this.removeSlot(this.index[p]!);
    return 0;
  }

  keys(): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (this.lru) {
      for (let s = this.head; s >= 0; s = this.next[s]!) out.push(this.keySlab.slice(s * this.keySize, (s + 1) * this.keySize));
      return out;
    }
    for (const s of this.index) if (s >= 0) out.push(this.keySlab.slice(s * this.keySize, (s + 1) * this.keySize));
    return out;
  }

  override get size(): number {
    return this.count;
  }

  clear(): void {
    for (const k of this.keys()) this.deleteAt(k, 0);
  }
}

export function createMap(spec: VmMapSpec): VmMap {
  switch (spec.type) {
    case 'array':
    case 'percpu_array':
      return new ArrayMap(spec);
    case 'hash':
    case 'lru_hash':
      return new HashMap(spec);
    default:
      throw new UsageError(`map ${spec.name ?? ''}: the VM has no map type "${String((spec as { type: unknown }).type)}"`, {
        hint: 'supported: array, percpu_array, hash, lru_hash',
      });
  }
}
