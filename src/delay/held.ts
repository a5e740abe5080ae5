/**
 * The other half of HELD_MAP's bookkeeping (src/compiler/layout.ts): the program adds 1 to a
 * connection's count when it sends a `reorder` packet to be held; whoever holds it takes the 1
 * away when the packet leaves, by any way. The live delay line does it on the kernel's map,
 * replay on the VM's or the kernel's: both through uncountHeld.
 */

/** What uncountHeld needs of a map: a kernel BpfMap and a VM map both fit. */
export interface HeldCounts {
  lookup(key: Uint8Array): Uint8Array | undefined;
  update(key: Uint8Array, value: Uint8Array): void;
  delete(key: Uint8Array): unknown;
}

/**
 * Takes 1 off the u64 count of connection `key`, deleting the entry at 0 (so the program stops
 * sending the connection's packets through the line as followers). A missing entry stays missing.
 * The read and the write are two steps: an add by the program in between is lost, and the
 * connection's count then reaches 0 while one of its packets is still held; that packet leaves
 * by its timeout instead of after its followers (rare: two held packets of one connection at once).
 */
export function uncountHeld(map: HeldCounts, key: Uint8Array): void {
  const v = map.lookup(key);
  if (!v) return;
  const n = new DataView(v.buffer, v.byteOffset, v.byteLength).getBigUint64(0, true);
  if (n <= 1n) {
    map.delete(key);
    return;
  }
  const next = new Uint8Array(8);
  new DataView(next.buffer).setBigUint64(0, n - 1n, true);
  map.update(key, next);
}
