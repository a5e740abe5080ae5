/**
 * BPF maps: create one, read and write it from user space, iterate its keys.
 *
 * Per-CPU maps (percpu_array, percpu_hash, lru_percpu_hash) hold one value per possible CPU;
 * from user space a value is all of them at once, each slot rounded up to 8 bytes. `lookup()`
 * returns that whole buffer, `perCpuValues()` splits it, and `update()` accepts either the
 * whole buffer or a single value that it copies to every CPU.
 */
import { NetmangleError } from '../errors.js';
import { closeFd, possibleCpus, sanitizeObjectName } from './fd.js';
import {
  Attr, BpfError, Cmd, EINVAL, ENOENT, Flags, MAP_TYPES, OBJ_NAME_LEN, Off, bpfCall, bpfTry, nameOf, objectInfo, type MapType,
} from './sys.js';

export interface CreateMapOptions {
  type: MapType;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** At most 15 characters; other characters than [A-Za-z0-9_.] become '_'. */
  name?: string;
  /** BPF_F_* map flags, e.g. Flags.NO_PREALLOC for hash maps. */
  flags?: number;
}

export type UpdateFlag = 'any' | 'noexist' | 'exist' | number;

const PER_CPU_TYPES = new Set<number>([MAP_TYPES.percpu_array, MAP_TYPES.percpu_hash, MAP_TYPES.lru_percpu_hash]);

export class BpfMap implements Disposable {
  readonly type: string;
  readonly typeId: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly name: string;
  readonly id: number;
  /** True for per-CPU maps: lookups return `cpus` slots of `valueStride` bytes. */
  readonly perCpu: boolean;
  readonly cpus: number;
  /** Bytes between per-CPU slots (valueSize rounded up to 8), or valueSize. */
  readonly valueStride: number;
  private fdValue: number;

  /** Wraps an open map fd (takes ownership: close() closes it). */
  constructor(fd: number, desc: { typeId: number; keySize: number; valueSize: number; maxEntries: number; name: string; id: number }) {
    this.fdValue = fd;
    this.typeId = desc.typeId;
    this.type = nameOf(MAP_TYPES, desc.typeId);
    this.keySize = desc.keySize;
    this.valueSize = desc.valueSize;
    this.maxEntries = desc.maxEntries;
    this.name = desc.name;
    this.id = desc.id;
    this.perCpu = PER_CPU_TYPES.has(desc.typeId);
    this.cpus = this.perCpu ? possibleCpus() : 1;
    this.valueStride = this.perCpu ? Math.ceil(desc.valueSize / 8) * 8 : desc.valueSize;
  }

  /** Wraps an fd from BPF_OBJ_GET or BPF_MAP_GET_FD_BY_ID, reading its shape from the kernel. */
  static fromFd(fd: number): BpfMap {
    const info = objectInfo(fd, 'map', 96);
    return new BpfMap(fd, {
      typeId: info.readUInt32LE(0),
      id: info.readUInt32LE(4),
      keySize: info.readUInt32LE(8),
      valueSize: info.readUInt32LE(12),
      maxEntries: info.readUInt32LE(16),
      name: info.subarray(24, 24 + OBJ_NAME_LEN).toString('utf8').replace(/\0.*$/s, ''),
    });
  }

  get fd(): number {
    if (this.fdValue < 0) throw new NetmangleError(`map ${this.label} is already closed`);
    return this.fdValue;
  }

  get closed(): boolean {
    return this.fdValue < 0;
  }

  /** Bytes of a value as user space sees it (all CPUs for per-CPU maps). */
  get valueBufferSize(): number {
    return this.valueStride * this.cpus;
  }

  private get label(): string {
    return this.name ? `'${this.name}' (id ${this.id})` : `id ${this.id}`;
  }

  private checkKey(key: Uint8Array): Buffer {
    if (key.length !== this.keySize) {
      throw new NetmangleError(`map ${this.label}: key is ${key.length} bytes, this map's keys are ${this.keySize}`);
    }
    return Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  }

  /** The value for `key`, or undefined when there is none (all CPUs' slots for per-CPU maps). */
  lookup(key: Uint8Array): Buffer | undefined {
    const k = this.checkKey(key);
    const value = Buffer.alloc(this.valueBufferSize);
    const attr = new Attr().u32(Off.mapElem.mapFd, this.fd).ptr(Off.mapElem.key, k).ptr(Off.mapElem.value, value);
    const ret = bpfTry(Cmd.MAP_LOOKUP_ELEM, attr);
    if (ret === -ENOENT) return undefined;
    if (ret < 0) throw new BpfError('look up key in map', this.label, -ret);
    return value;
  }

  /** Per-CPU maps: one Buffer of valueSize bytes per possible CPU; other maps: [value]. */
  perCpuValues(key: Uint8Array): Buffer[] | undefined {
    const all = this.lookup(key);
    if (all === undefined) return undefined;
    const out: Buffer[] = [];
    for (let cpu = 0; cpu < this.cpus; cpu++) {
      out.push(all.subarray(cpu * this.valueStride, cpu * this.valueStride + this.valueSize));
    }
    return out;
  }

  /**
   * Writes `value` at `key`. 'noexist' fails with EEXIST if the key exists, 'exist' with ENOENT if
   * it does not. A per-CPU map takes either the full per-CPU buffer or one value for every CPU.
   */
  update(key: Uint8Array, value: Uint8Array, flags: UpdateFlag = 'any'): void {
    const k = this.checkKey(key);
    const v = this.fullValue(value);
    const f = typeof flags === 'number' ? flags : flags === 'noexist' ? Flags.NOEXIST : flags === 'exist' ? Flags.EXIST : Flags.ANY;
    const attr = new Attr().u32(Off.mapElem.mapFd, this.fd).ptr(Off.mapElem.key, k).ptr(Off.mapElem.value, v).u64(Off.mapElem.flags, f);
    bpfCall(Cmd.MAP_UPDATE_ELEM, attr, 'update map', this.label);
  }

  private fullValue(value: Uint8Array): Buffer {
    const v = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    if (v.length === this.valueBufferSize) return v;
    if (this.perCpu && v.length === this.valueSize) {
      const all = Buffer.alloc(this.valueBufferSize);
      for (let cpu = 0; cpu < this.cpus; cpu++) v.copy(all, cpu * this.valueStride);
      return all;
    }
    const expected = this.perCpu ? `${this.valueSize} (one CPU) or ${this.valueBufferSize} (all ${this.cpus} CPUs)` : String(this.valueSize);
    throw new NetmangleError(`map ${this.label}: value is ${v.length} bytes, expected ${expected}`);
  }

  /** Removes `key`; false when it was not there. Array maps cannot delete (EINVAL). */
  delete(key: Uint8Array): boolean {
    const k = this.checkKey(key);
    const attr = new Attr().u32(Off.mapElem.mapFd, this.fd).ptr(Off.mapElem.key, k);
    const ret = bpfTry(Cmd.MAP_DELETE_ELEM, attr);
    if (ret === -ENOENT) return false;
    if (ret < 0) {
      const hint = ret === -EINVAL && (this.type.endsWith('array')) ? 'elements of array maps cannot be deleted; write zeros instead' : undefined;
      throw new BpfError('delete key from map', this.label, -ret, hint ? { hint } : {});
    }
    return true;
  }

  /**
   * Every key, by BPF_MAP_GET_NEXT_KEY. A hash map changed during iteration may restart from
   * its first key (the kernel's documented behaviour when the current key was deleted).
   */
  *keys(): IterableIterator<Buffer> {
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keySize);
      const attr = new Attr().u32(Off.mapElem.mapFd, this.fd).ptr(Off.mapElem.key, prev).ptr(Off.mapElem.nextKey, next);
      const ret = bpfTry(Cmd.MAP_GET_NEXT_KEY, attr);
      if (ret === -ENOENT) return;
      if (ret < 0) throw new BpfError('iterate map', this.label, -ret);
      yield next;
      prev = next;
    }
  }

  /** [key, value] pairs; entries deleted between the key walk and the lookup are skipped. */
  *entries(): IterableIterator<[Buffer, Buffer]> {
    for (const key of this.keys()) {
      const value = this.lookup(key);
      if (value !== undefined) yield [key, value];
    }
  }

  close(): void {
    closeFd(this.fdValue);
    this.fdValue = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Creates a map. Ring buffers take keySize 0, valueSize 0 and a maxEntries that is a power of
 * two and a multiple of the page size (it is the buffer's size in bytes).
 */
export function createMap(opts: CreateMapOptions): BpfMap {
  const typeId = MAP_TYPES[opts.type];
  if (typeId === undefined) throw new NetmangleError(`unknown map type '${opts.type}'`, { hint: `use one of: ${Object.keys(MAP_TYPES).join(', ')}` });
  const name = sanitizeObjectName(opts.name);
  const attr = new Attr()
    .u32(Off.mapCreate.mapType, typeId)
    .u32(Off.mapCreate.keySize, opts.keySize)
    .u32(Off.mapCreate.valueSize, opts.valueSize)
    .u32(Off.mapCreate.maxEntries, opts.maxEntries)
    .u32(Off.mapCreate.mapFlags, opts.flags ?? 0)
    .str(Off.mapCreate.mapName, name, OBJ_NAME_LEN);
  const what = `${opts.type} map${name ? ` '${name}'` : ''} (key ${opts.keySize} B, value ${opts.valueSize} B, ${opts.maxEntries} entries)`;
  const fd = bpfCall(Cmd.MAP_CREATE, attr, 'create', what);
  try {
    const info = objectInfo(fd, 'map', 96);
    return new BpfMap(fd, { typeId, keySize: opts.keySize, valueSize: opts.valueSize, maxEntries: opts.maxEntries, name, id: info.readUInt32LE(4) });
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}
