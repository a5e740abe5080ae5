/**
 * The checked form of netmangle's rule language: what src/rules/ produces and src/compiler/
 * (and the VM's packet decoder, trace diffs and docs) consume. The parser and checker own how
 * text becomes these values; everything downstream reads only these types.
 */

/** Protocol layers a field can live in, outermost first. */
export type Layer = 'frame' | 'eth' | 'vlan' | 'ip' | 'ipv6' | 'tcp' | 'udp' | 'icmp' | 'icmpv6';

/** Checksums that cover a field: the IPv4 header checksum, the L4 checksum over the segment, or
 *  the L4 checksum through the pseudo-header (addresses, protocol, length). */
export type ChecksumCover = 'ipv4-header' | 'l4' | 'l4-pseudo';

export type FieldKind = 'uint' | 'bool' | 'ipv4' | 'ipv6' | 'mac';

/**
 * One entry of the field catalog: where a field sits and how to read and write it.
 * The value of a field is: read `width` bytes big-endian at `offset` from the start of its
 * layer's header, then `(container >> shift) & mask`, then times `scale`.
 */
export interface FieldDef {
  /** Wireshark display-filter name: 'ip.ttl', 'tcp.flags.push'. */
  name: string;
  layer: Layer;
  /** Byte offset from the start of the layer's header (for 'frame': see `special`). */
  offset: number;
  /** Bytes of the container read: 1, 2 or 4 for numbers; 4 ipv4, 16 ipv6, 6 mac. */
  width: 1 | 2 | 4 | 6 | 16;
  /** Right shift applied to the container (0 when the field fills it). */
  shift: number;
  /** Mask applied after the shift (for whole containers: all ones of the width; 0 for the
   *  6- and 16-byte addresses, which are compared and copied bytewise). */
  mask: number;
  /** Multiplier from the raw value to the user-visible one (ip.hdr_len is 4 × the nibble). */
  scale: number;
  kind: FieldKind;
  /** Largest value the field can hold, in user-visible units (0 for 6- and 16-byte addresses). */
  max: number;
  /** Whether `set` may write it. */
  writable: boolean;
  /** Checksums that must be fixed when it changes. */
  covers: ChecksumCover[];
  /** Fields that are one of two real fields (`ip.addr`, `tcp.port`): match-only, either side. */
  either?: [string, string];
  /** Fields not read from a header: 'frame.len' is the packet length; 'tcp.len' the TCP
   *  payload length, computed from the IP length field and the header lengths. */
  special?: 'frame.len' | 'tcp.len';
  description: string;
}

/** A position in the rule text, for errors with a caret. */
export interface Span {
  start: number;
  end: number;
}

export type ArithOp = '+' | '-' | '*' | '/' | '%' | '&' | '|' | '^' | '<<' | '>>';
export type CmpOp = '==' | '!=' | '<' | '<=' | '>' | '>=';

export type Expr =
  | { kind: 'num'; value: number; span: Span }
  /** An address constant; `prefix` set for CIDR blocks (only valid in comparisons with == / !=). */
  | { kind: 'addr'; family: 'ipv4' | 'ipv6' | 'mac'; bytes: Uint8Array; prefix?: number; span: Span }
  | { kind: 'field'; field: FieldDef; span: Span }
  | { kind: 'arith'; op: ArithOp; left: Expr; right: Expr; span: Span }
  /** random(lo, hi) inclusive; min(a, b); max(a, b). */
  | { kind: 'call'; fn: 'random' | 'min' | 'max'; args: Expr[]; span: Span };

export type Cond =
  | { kind: 'true' }
  /** A bare protocol name: 'tcp', 'ipv6', 'icmp', 'vlan' … */
  | { kind: 'proto'; layer: Layer; span: Span }
  /** A bare expression used as a test: true when present and non-zero (`tcp.flags.push`, `tcp.flags & 0x12`). */
  | { kind: 'truthy'; expr: Expr; span: Span }
  | { kind: 'cmp'; op: CmpOp; left: Expr; right: Expr; span: Span }
  /** `expr in {80, 443, 1000..2000}`: ranges inclusive (Wireshark's `..`). The checker leaves
   *  `in` only on numbers of a single field: on addresses and `either` fields it becomes `or`s. */
  | { kind: 'in'; expr: Expr; items: Array<{ lo: Expr; hi?: Expr }>; span: Span }
  | { kind: 'and' | 'or'; left: Cond; right: Cond }
  | { kind: 'not'; arg: Cond };

export type Action =
  /** Right-hand sides read the packet as it was before this rule wrote to it. */
  | { kind: 'set'; field: FieldDef; value: Expr; span: Span }
  | { kind: 'drop'; span: Span }
  | { kind: 'pass'; span: Span }
  /** The packet goes on, and `count` copies of it (as the rule left it) are sent too: tc hooks only. */
  | { kind: 'duplicate'; count: number; span: Span }
  /** Flip `bits` random bits of the L4 payload (the bytes after the TCP/UDP/ICMP header). */
  | { kind: 'corrupt'; bits: number; span: Span }
  /** Cut the frame to `length` bytes (IP and UDP length fields follow unless `lengths: keep`). */
  | { kind: 'truncate'; length: number; span: Span }
  /**
   * Hold the packet `ns` nanoseconds (plus up to `jitterNs` drawn from `distribution`) in
   * netmangle's user-space delay line, then send it on: tc egress only, live sessions only.
   */
  | { kind: 'delay'; ns: number; jitterNs?: number; distribution?: DelayDistribution; span: Span }
  /**
   * Hold the packet in the delay line until `by` later packets of its connection have passed
   * this hook, or `timeoutNs` has gone by, whichever comes first; then send it on.
   */
  | { kind: 'reorder'; by: number; timeoutNs: number; span: Span }
  /**
   * Answer instead of delivering, sent back out the interface the packet came in on; the
   * packet is dropped. Without `with`: a TCP RST for TCP, ICMP(v6) port unreachable otherwise.
   */
  | { kind: 'reject'; with?: RejectWith; span: Span };

/** `reorder` without `by`: the packet is overtaken by one later packet. */
export const DEFAULT_REORDER_BY = 1;
/** `reorder` without `timeout`: the longest a packet waits for the packets that overtake it. */
export const DEFAULT_REORDER_TIMEOUT_NS = 50_000_000;

export const DELAY_DISTRIBUTIONS = ['uniform', 'normal', 'pareto'] as const;
export type DelayDistribution = (typeof DELAY_DISTRIBUTIONS)[number];

/** What `reject` answers with: `tcp-reset` (TCP only; the default for TCP) or an unreachable code. */
export type RejectWith = 'tcp-reset' | 'net-unreachable' | 'host-unreachable' | 'port-unreachable' | 'proto-unreachable' | 'admin-prohibited';

export type Hook = 'xdp' | 'ingress' | 'egress';

export interface Rule {
  /** Given in a rules file, or derived (`rule-1`) for the one-line form. */
  name: string;
  /** The rule's source text (one-line form) or `match => actions` rebuilt from YAML. */
  text: string;
  match: Cond;
  actions: Action[];
  /** Act on a matching packet with this probability (0 < p ≤ 1); absent: always. */
  probability?: number;
  /** Act on the Nth, 2Nth … matching packet; absent: every one. */
  every?: number;
  /** 'fix' (default): checksums right after every change; 'keep': left stale on purpose. */
  checksum: 'fix' | 'keep';
  /** Skip the first N matching packets (the count per connection with `perConnection`). */
  after?: number;
  /** Act on the first N packets that `after` and `every` let through, then never again. */
  first?: number;
  /**
   * Keep the counts of `after`, `first` and `every` per connection (both directions of a
   * TCP/UDP flow, or an ICMP echo id, as one) in an LRU hash map of `connections` entries.
   */
  perConnection?: boolean;
  /** Size of the per-connection map (default DEFAULT_CONNECTIONS). */
  connections?: number;
  /** Act on at most `packets` packets per `intervalNs` (a token bucket in the program). */
  limit?: RateLimit;
  /** Stop acting this long after the program's start (its own clock, bpf_ktime_get_ns). */
  forNs?: number;
  /** Start acting only this long after the program's start. */
  startAfterNs?: number;
  /** 'fix' (default): `truncate` rewrites the IP and UDP length fields; 'keep': leaves them. */
  lengths?: 'fix' | 'keep';
}

/** `--limit 100/s`: at most `packets` per `intervalNs` nanoseconds. */
export interface RateLimit {
  packets: number;
  intervalNs: number;
  /** As the user wrote it, for listings. */
  text: string;
}

export const DEFAULT_CONNECTIONS = 65536;
/** The most connections one per-connection map may remember (about 117 MB of kernel memory for one rule). */
export const MAX_CONNECTIONS = 1 << 20;
/**
 * Kernel memory the per-connection map of `rules` per-connection rules (of `entries`
 * connections) locks, as the kernel counts it (the map's memlock in fdinfo, 6.18): an LRU hash
 * map allocates every entry up front, each a 48-byte element header, the 40-byte key and a u64
 * per rule, plus a 16-byte bucket per entry rounded up to a power of two. compiler/layout.ts
 * lays the map out.
 */
export function connectionMapBytes(entries: number, rules = 1): number {
  const buckets = 2 ** Math.ceil(Math.log2(Math.max(1, entries)));
  return entries * (48 + 40 + 8 * rules) + 16 * buckets;
}

/** Bytes as people say them: 117 MB, 1.9 GB (powers of 1000, as free(1) -h does not, but as the bytes are sold). */
export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
  if (n >= 1e6) return `${Math.round(n / 1e6)} MB`;
  if (n >= 1e3) return `${Math.round(n / 1e3)} kB`;
  return `${n} B`;
}

/** Rules that share one (interface, hook, namespace): compiled into one program. */
export interface RuleGroup {
  dev: string;
  hook: Hook;
  netns?: string;
  rules: Rule[];
}
