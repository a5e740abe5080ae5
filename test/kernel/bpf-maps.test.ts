import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { NetmangleError } from '../../src/errors.js';
import {
  BpfError, BpfMap, createMap, getPinned, mapFdById, mapInfo, openPinnedMap, pinDir, pinObject, possibleCpus,
} from '../../src/kernel/index.js';
import { kernelTest } from '../helpers/kernel.js';
import { u32Key, u64Value } from './bpf-fixtures.js';

const sortedHex = (keys: Iterable<Buffer>) => [...keys].map((k) => k.toString('hex')).sort();

kernelTest('array map: zero-filled entries, update and lookup, keys in order, no delete', () => {
  using m = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 4, name: 'nm_arr' });
  assert.equal(m.type, 'array');
  assert.ok(m.id > 0);
  assert.deepEqual(m.lookup(u32Key(2)), Buffer.alloc(8));
  assert.equal(m.lookup(u32Key(4)), undefined, 'beyond maxEntries there is no entry');
  m.update(u32Key(2), u64Value(0x1122334455n));
  assert.equal(m.lookup(u32Key(2))!.readBigUInt64LE(0), 0x1122334455n);
  assert.deepEqual([...m.keys()].map((k) => k.readUInt32LE(0)), [0, 1, 2, 3]);
  const entries = [...m.entries()];
  assert.equal(entries.length, 4);
  assert.equal(entries[2]![1].readBigUInt64LE(0), 0x1122334455n);
  assert.throws(() => m.delete(u32Key(0)), (err: unknown) => err instanceof BpfError && err.code === 'EINVAL');
  assert.deepEqual(mapInfo(m), { id: m.id, type: 'array', typeId: 2, keySize: 4, valueSize: 8, maxEntries: 4, flags: 0, name: 'nm_arr' });
});

for (const type of ['hash', 'lru_hash'] as const) {
  kernelTest(`${type} map: insert, lookup, iterate, delete, and the update flags`, () => {
    using m = createMap({ type, keySize: 4, valueSize: 4, maxEntries: 16, name: `nm_${type}` });
    assert.equal(m.type, type);
    assert.equal([...m.keys()].length, 0);
    for (const k of [5, 9, 300]) m.update(u32Key(k), u32Key(k * 10));
    assert.equal(m.lookup(u32Key(9))!.readUInt32LE(0), 90);
    assert.equal(m.lookup(u32Key(7)), undefined);
    assert.deepEqual(sortedHex(m.keys()), sortedHex([5, 9, 300].map(u32Key)));
    assert.throws(() => m.update(u32Key(5), u32Key(1), 'noexist'), (err: unknown) => err instanceof BpfError && err.code === 'EEXIST');
    assert.throws(() => m.update(u32Key(6), u32Key(1), 'exist'), (err: unknown) => err instanceof BpfError && err.code === 'ENOENT');
    m.update(u32Key(5), u32Key(55), 'exist');
    assert.equal(m.lookup(u32Key(5))!.readUInt32LE(0), 55);
    assert.equal(m.delete(u32Key(9)), true);
    assert.equal(m.delete(u32Key(9)), false);
    assert.equal(m.lookup(u32Key(9)), undefined);
    assert.equal([...m.entries()].length, 2);
  });
}

kernelTest('lru_hash map evicts instead of failing when full', () => {
  using m = createMap({ type: 'lru_hash', keySize: 4, valueSize: 4, maxEntries: 64 });
  for (let k = 0; k < 1000; k++) m.update(u32Key(k), u32Key(k));
  const n = [...m.keys()].length;
  assert.ok(n > 0 && n <= 64, `${n} entries`);
  assert.notEqual(m.lookup(u32Key(999)), undefined, 'the newest entry is kept');
  using h = createMap({ type: 'hash', keySize: 4, valueSize: 4, maxEntries: 4 });
  for (let k = 0; k < 4; k++) h.update(u32Key(k), u32Key(k));
  assert.throws(() => h.update(u32Key(4), u32Key(4)), (err: unknown) => err instanceof BpfError && err.code === 'E2BIG');
});

for (const type of ['percpu_array', 'percpu_hash', 'lru_percpu_hash'] as const) {
  kernelTest(`${type} map: one value slot per possible CPU, rounded to 8 bytes`, () => {
    using m = createMap({ type, keySize: 4, valueSize: 4, maxEntries: 8 });
    const cpus = possibleCpus();
    assert.equal(m.perCpu, true);
    assert.equal(m.cpus, cpus);
    assert.equal(m.valueStride, 8);
    assert.equal(m.valueBufferSize, 8 * cpus);
    // One value is copied to every CPU.
    m.update(u32Key(1), u32Key(0xabcd));
    const same = m.perCpuValues(u32Key(1))!;
    assert.equal(same.length, cpus);
    for (const v of same) assert.equal(v.readUInt32LE(0), 0xabcd);
    assert.equal(m.lookup(u32Key(1))!.length, 8 * cpus);
    // A full buffer sets each CPU's slot.
    const full = Buffer.alloc(8 * cpus);
    for (let c = 0; c < cpus; c++) full.writeUInt32LE(100 + c, c * 8);
    m.update(u32Key(1), full);
    assert.deepEqual(m.perCpuValues(u32Key(1))!.map((v) => v.readUInt32LE(0)), Array.from({ length: cpus }, (_, c) => 100 + c));
    assert.throws(() => m.update(u32Key(1), Buffer.alloc(5)), (err: unknown) => err instanceof NetmangleError && /value is 5 bytes/.test(err.message));
    assert.ok([...m.keys()].some((k) => k.readUInt32LE(0) === 1));
  });
}

kernelTest('ringbuf map is created with its size in maxEntries', () => {
  using m = createMap({ type: 'ringbuf', keySize: 0, valueSize: 0, maxEntries: 64 * 1024, name: 'nm_rb' });
  const info = mapInfo(m);
  assert.equal(info.type, 'ringbuf');
  assert.equal(info.maxEntries, 64 * 1024);
  assert.throws(() => createMap({ type: 'ringbuf', keySize: 0, valueSize: 0, maxEntries: 1000 }), BpfError, 'not a power of two');
});

kernelTest('keys of the wrong size are refused with the sizes named', () => {
  using m = createMap({ type: 'hash', keySize: 4, valueSize: 4, maxEntries: 4, name: 'nm_keys' });
  assert.throws(() => m.lookup(Buffer.alloc(3)), /key is 3 bytes, this map's keys are 4/);
  m.close();
  assert.throws(() => m.lookup(u32Key(0)), /already closed/);
});

kernelTest('a map pinned in bpffs and opened again (by path and by id) is the same map', () => {
  const dir = pinDir(`test-${process.pid}`);
  const path = join(dir, 'counts');
  try {
    using m = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 2, name: 'nm_pinned' });
    m.update(u32Key(1), u64Value(42));
    pinObject(m.fd, path);
    const pinned = getPinned(path);
    assert.equal(pinned.kind, 'map');
    using again = BpfMap.fromFd(pinned.fd);
    assert.equal(again.id, m.id);
    assert.equal(again.name, 'nm_pinned');
    assert.equal(again.lookup(u32Key(1))!.readBigUInt64LE(0), 42n);
    using third = openPinnedMap(path);
    assert.equal(third.valueSize, 8);
    using byId = BpfMap.fromFd(mapFdById(m.id));
    assert.equal(byId.maxEntries, 2);
    assert.throws(() => getPinned(join(dir, 'missing')), (err: unknown) => err instanceof BpfError && err.code === 'ENOENT');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
