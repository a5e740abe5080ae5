/**
 * What a register holds. The VM never hands a program a real address: a pointer is a
 * region tag plus a 64-bit offset into that region, so every access can be checked and
 * a program can never touch memory it was not given.
 */

/** A number. */
export const T_SCALAR = 0;
/** Never written (the kernel verifier refuses reading it). */
export const T_UNINIT = 1;
/** The current call frames' stack; offsets are from the stack's bottom, fp = 512 * (depth + 1). */
export const T_STACK = 2;
/** The context (xdp_md or __sk_buff); offset from its start. */
export const T_CTX = 3;
/** The packet; offset from data (the first byte). */
export const T_PACKET = 4;
/** A packet pointer taken before a helper changed the packet: unusable. */
export const T_PACKET_STALE = 5;
/** A map (from a 64-bit immediate load of a map fd); the low half is the map's index in the program. */
export const T_MAP = 6;
/** Tags from here up name one map value each (tag - T_VALUE is its index in the run's region table). */
export const T_VALUE = 8;

/** Bytes of stack per call frame, as in the kernel (MAX_BPF_STACK). */
export const STACK_SIZE = 512;
/** Call frames (the kernel's MAX_CALL_FRAMES). */
export const MAX_FRAMES = 8;
/** Backward jumps and calls a run may take before the VM stops it (a bad program's endless loop). */
export const LOOP_BUDGET = 1 << 22;

/** Space before the packet: XDP_PACKET_HEADROOM, what BPF_PROG_TEST_RUN gives XDP programs. */
export const HEADROOM = 256;
/** Room in front of the packet xdp_adjust_head may not take: sizeof(struct xdp_frame). */
export const XDP_FRAME_SIZE = 40;
/** Largest packet an XDP test run keeps in one buffer: 4096 - headroom - skb_shared_info (320). */
export const XDP_MAX_DATA = 4096 - HEADROOM - 320;
/** Largest packet: loopback's MTU 65536 plus its 14-byte header (bpf_skb_change_tail's limit there). */
export const MAX_PACKET = 65536 + 14;
export const ETH_HLEN = 14;
