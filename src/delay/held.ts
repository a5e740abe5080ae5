/**
 * The other half of HELD_MAP's bookkeeping by count (src/compiler/layout.ts), which replay uses:
 * the program adds 1 to a connection's count when it sends a `reorder` packet to be held; replay
 * takes the 1 away when the packet leaves, by any way, in the VM's map or the kernel's. (Replay is
 * one thread, so nothing can come between its read and its write; the live line keeps its
 * connections by time instead, which the program alone writes.)
 */

/** What uncountHeld needs of a map: a kernel BpfMap and a VM map both fit. */
export interface HeldCounts {
  lookup(key: Uint8Array): Uint8Array | undefined;
  update(key: Uint8Array, value: Uint8Array): void;
  delete(key: Uint8Array): unknown;
}

/**
 * Takes 1 off the u64 count of connection `key`, deleting the entry at 0 (so the program stops
 * sending the connection's packets on as followers). A missing entry stays missing.
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
