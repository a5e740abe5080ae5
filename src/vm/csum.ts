/**
 * The kernel's one's-complement checksum arithmetic (include/net/checksum.h, the x86-64
 * csum_partial) on the values the eBPF checksum helpers see. 32-bit quantities are
 * unsigned numbers; memory is read little-endian, as the kernel does on x86-64 and arm64,
 * so a 16-bit checksum field is the little-endian load of its two bytes.
 */

/** csum_add: 32-bit add with the carry folded back in. */
export function csumAdd(a: number, b: number): number {
  const res = ((a >>> 0) + (b >>> 0)) >>> 0;
  return (res + (res < (b >>> 0) ? 1 : 0)) >>> 0;
}

export function csumSub(a: number, b: number): number {
  return csumAdd(a, ~b >>> 0);
}

/** csum_fold: 32 to 16 bits, complemented. */
export function csumFold(sum: number): number {
  sum >>>= 0;
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * csum_partial over `len` bytes at buf[off..], starting from `seed`. The x86-64 implementation adds 64-bit words with carry
 * and folds to 32 bits; that equals adding the 32-bit words with end-around carry.
 */
export function csumPartial(buf: Uint8Array, off: number, len: number, seed: number): number {
  let sum = seed >>> 0;
  let i = 0;
  for (; i + 4 <= len; i += 4) {
    const w = (buf[off + i]! | (buf[off + i + 1]! << 8) | (buf[off + i + 2]! << 16) | (buf[off + i + 3]! << 24)) >>> 0;
    sum = csumAdd(sum, w);
  }
  // A tail of 1-3 bytes counts as a little-endian word padded with zeros, as x86-64 reads it.
  if (i < len) {
    let w = 0;
    for (let j = 0; i + j < len; j++) w |= buf[off + i + j]! << (8 * j);
    sum = csumAdd(sum, w >>> 0);
  }
  return sum;
}

/** csum_from32to16: the 16-bit one's-complement sum of a 32-bit partial sum, not complemented. */
export function csumFrom32to16(sum: number): number {
  sum >>>= 0;
  const rotated = ((sum >>> 16) | (sum << 16)) >>> 0;
  return (((sum + rotated) >>> 0) >>> 16) & 0xffff;
}

/** ~csum_unfold(sum16): the complemented field widened to 32 bits (upper half all ones). */
function notUnfold(sum16: number): number {
  return ~(sum16 & 0xffff) >>> 0;
}

/** csum_replace4: the new checksum field after a 32-bit word changes from `from` to `to`. */
export function csumReplace4(sum16: number, from: number, to: number): number {
  return csumFold(csumAdd(csumSub(notUnfold(sum16), from), to));
}

/** csum_replace2 via csum16 arithmetic. */
export function csumReplace2(sum16: number, from: number, to: number): number {
  const add16 = (csum: number, addend: number): number => {
    let res = (csum + addend) & 0xffff;
    res = (res + (res < (addend & 0xffff) ? 1 : 0)) & 0xffff;
    return res;
  };
  const notSum = ~sum16 & 0xffff;
  return ~add16(add16(notSum, ~from & 0xffff), to & 0xffff) & 0xffff;
}

/** csum_replace_by_diff: the field after adding a 32-bit checksum difference. */
export function csumReplaceByDiff(sum16: number, diff: number): number {
  return csumFold(csumAdd(diff, notUnfold(sum16)));
}

/**
 * inet_proto_csum_replace4 on a packet that is not CHECKSUM_PARTIAL (BPF_PROG_TEST_RUN's
 * and the VM's case): the field changes like csum_replace4 over the pair { ~from, to }.
 */
export function inetProtoCsumReplace4(sum16: number, from: number, to: number): number {
  const partial = csumAdd(csumAdd(notUnfold(sum16), ~from >>> 0), to >>> 0);
  return csumFold(partial);
}

/** inet_proto_csum_replace_by_diff, not CHECKSUM_PARTIAL. */
export function inetProtoCsumReplaceByDiff(sum16: number, diff: number): number {
  return csumFold(csumAdd(diff >>> 0, notUnfold(sum16)));
}
