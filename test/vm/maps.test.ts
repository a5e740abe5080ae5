/** The VM's maps from the caller's side: kernel flags and errors, per-CPU copies, LRU eviction. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMap, BPF_EXIST, BPF_NOEXIST } from '../../src/vm/maps.js';
import { UsageError } from '../../src/errors.js';

const key = (...b: number[]) => Uint8Array.from(b);
const val = (n: number) => Uint8Array.from([n, 0, 0, 0]);

test('array: every index exists and starts zeroed, NOEXIST fails, delete is refused, index beyond max is refused', () => {
  const m = createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 3, name: 'a' });
  assert.deepEqual([...m.lookup(2)!], [0, 0, 0, 0]);
  assert.equal(m.lookup(3), undefined);
  m.update(1, val(9));
  assert.equal(m.lookup(1)![0], 9);
  assert.throws(() => m.update(1, val(1), BPF_NOEXIST), /EEXIST/);
  assert.throws(() => m.update(3, val(1)), /E2BIG/);
  assert.throws(() => m.delete(1), UsageError);
  assert.equal(m.size, 3);
});

test('hash: insert, replace, flags, full map, delete, iteration', () => {
  const m = createMap({ type: 'hash', keySize: 2, valueSize: 4, maxEntries: 2, name: 'h' });
  assert.throws(() => m.update(key(1, 1), val(1), BPF_EXIST), /ENOENT/);
  m.update(key(1, 1), val(1));
  m.update(key(1, 2), val(2));
  m.update(key(1, 1), val(3));
  assert.equal(m.lookup(key(1, 1))![0], 3);
  assert.throws(() => m.update(key(9, 9), val(4)), /E2BIG/);
  assert.equal(m.delete(key(1, 1)), true);
  assert.equal(m.delete(key(1, 1)), false);
  m.update(key(9, 9), val(4));
  assert.deepEqual(m.entries().map(([k, v]) => [k[1], v[0]]).sort(), [[2, 2], [9, 4]]);
  assert.throws(() => m.update(key(1), val(1)), /key has 1 bytes/);
});

test('hash: many inserts and deletes keep lookups right (tombstones are cleaned up)', () => {
  const m = createMap({ type: 'hash', keySize: 4, valueSize: 4, maxEntries: 64, name: 'churn' });
  const live = new Map<number, number>();
  for (let i = 0; i < 20000; i++) {
    const k = (i * 7919) % 500;
    if (live.size < 64 && !live.has(k)) {
      m.update(k, val(i & 0xff));
      live.set(k, i & 0xff);
    } else if (live.has(k)) {
      assert.equal(m.delete(k), true);
      live.delete(k);
    }
  }
  for (let k = 0; k < 500; k++) assert.equal(m.lookup(k)?.[0], live.get(k), `key ${k}`);
  assert.equal(m.size, live.size);
});

test('LRU hash evicts the least recently used element when full; a lookup counts as use', () => {
  const m = createMap({ type: 'lru_hash', keySize: 4, valueSize: 4, maxEntries: 3, name: 'lru' });
  m.update(1, val(1));
  m.update(2, val(2));
  m.update(3, val(3));
  assert.ok(m.lookup(1)); // 1 is now the most recent; 2 the least
  m.update(4, val(4));
  assert.equal(m.lookup(2), undefined);
  assert.deepEqual([1, 3, 4].map((k) => m.lookup(k)?.[0]), [1, 3, 4]);
  assert.equal(m.size, 3);
});

test('per-CPU array: one copy per CPU, set together by update', () => {
  const m = createMap({ type: 'percpu_array', keySize: 4, valueSize: 4, maxEntries: 1, cpus: 3, name: 'pc' });
  m.update(0, val(5));
  assert.deepEqual(m.lookupAllCpus(0)!.map((v) => v[0]), [5, 5, 5]);
  assert.throws(() => m.lookup(0, 3), /cpu 3/);
});

test('bad map specs are refused with a clear message', () => {
  assert.throws(() => createMap({ type: 'array', keySize: 8, valueSize: 4, maxEntries: 1, name: 'x' }), /4-byte keys/);
  assert.throws(() => createMap({ type: 'hash', keySize: 0, valueSize: 4, maxEntries: 1, name: 'x' }), /key size must be a positive integer/);
  assert.throws(() => createMap({ type: 'ringbuf' as never, keySize: 4, valueSize: 4, maxEntries: 1 }), /no map type "ringbuf"/);
});
