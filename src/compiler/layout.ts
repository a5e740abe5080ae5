/**
 * Fixed facts the compiled programs rely on: context field offsets (uapi struct xdp_md and
 * struct __sk_buff), verdicts, helper ids and flags, and the layout of netmangle's own maps.
 */
import type { Hook, Layer } from '../rules/ast.js';

export type ProgKind = 'xdp' | 'sched_cls';

export const progKindOf = (hook: Hook): ProgKind => (hook === 'xdp' ? 'xdp' : 'sched_cls');

/** Context offsets of the packet bounds, per program type. */
export const CTX = {
  xdp: { data: 0, dataEnd: 4 },
  sched_cls: { data: 76, dataEnd: 80 },
} as const;

/** struct __sk_buff fields read by compiled tc programs. */
export const SKB = { len: 0, mark: 8, ifindex: 40, tcIndex: 44, gsoSegs: 164 } as const;

/**
 * skb->tc_index of the copies `duplicate` sends (bpf_clone_redirect back to the same hook):
 * a program with `duplicate` lets a packet carrying it pass untouched (and clears it), so a
 * copy is neither counted nor copied again.
 */
export const DUPLICATE_TC_INDEX = 0x6e6d;
/**
 * skb->mark of packets coming back from a delay line (set by the program on its TAP device,
 * src/delay/): DELAYED_MARK_BASE with the line's 16-bit id below it. A rule's program that sees
 * its own line's mark clears it and lets the packet pass; one that sees another line's mark lets
 * it pass untouched (it saw the packet before that line took it), so two netmangle runs holding
 * packets on one hook each hold a packet once instead of passing it back and forth forever.
 */
export const DELAYED_MARK_BASE = 0x6e6d0000;
export const DELAYED_MARK_MASK = 0xffff0000;
export const delayedMark = (lineId: number): number => (DELAYED_MARK_BASE | (lineId & 0xffff)) >>> 0;
/** bpf_clone_redirect flag: into the device's ingress instead of its egress. */
export const BPF_F_INGRESS = 1;

export const XDP_ABORTED = 0;
export const XDP_DROP = 1;
export const XDP_PASS = 2;
export const TC_ACT_UNSPEC = -1;
export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;

/**
 * Verdicts per hook: what "no decision" (fall through), `pass` and `drop` return. At tc, `pass`
 * ends netmangle's rules only: TC_ACT_UNSPEC hands the packet to the next program on the hook
 * (TCX_NEXT for tcx, the next filter for cls_bpf direct-action), and passes it when there is
 * none; TC_ACT_OK would end the hook and keep every later program from seeing the packet.
 */
export function verdicts(kind: ProgKind): { none: number; pass: number; drop: number } {
  return kind === 'xdp'
    ? { none: XDP_PASS, pass: XDP_PASS, drop: XDP_DROP }
    : { none: TC_ACT_UNSPEC, pass: TC_ACT_UNSPEC, drop: TC_ACT_SHOT };
}

export const HELPER = {
  map_lookup_elem: 1,
  map_update_elem: 2,
  clone_redirect: 13,
  ktime_get_ns: 5,
  l3_csum_replace: 10,
  l4_csum_replace: 11,
  xdp_get_buff_len: 188,
  skb_change_tail: 38,
  csum_diff: 28,
  redirect: 23,
  skb_change_head: 43,
  skb_vlan_push: 18,
  xdp_adjust_head: 44,
  skb_load_bytes: 26,
  xdp_load_bytes: 189,
  xdp_adjust_tail: 65,
  get_smp_processor_id: 8,
} as const;

/** bpf_l4_csum_replace flags. */
export const BPF_F_PSEUDO_HDR = 1 << 4;
export const BPF_F_MARK_MANGLED_0 = 1 << 5;

/** Bits of the "layers present" register the parser fills. */
export const LAYER_BIT: Record<Exclude<Layer, 'frame'>, number> = {
  eth: 1 << 0,
  vlan: 1 << 1,
  ip: 1 << 2,
  ipv6: 1 << 3,
  tcp: 1 << 4,
  udp: 1 << 5,
  icmp: 1 << 6,
  icmpv6: 1 << 7,
};

/**
 * The per-CPU state map: one entry (key 0) whose value is
 *   u64 prng state | u64 GSO packets seen | per rule: u64 matched, u64 acted, u64 dropped.
 */
export const STATE_MAP = 'nm_state';
export const STATE_PRNG = 0;
export const STATE_GSO = 8;
export const STATE_RULES = 16;
export const RULE_COUNTERS = 24;
export const stateValueSize = (rules: number): number => STATE_RULES + RULE_COUNTERS * rules;
/** The largest per-CPU map value the kernel allocates (PCPU_MIN_UNIT_SIZE): the state value must fit. */
export const PERCPU_VALUE_MAX = 32768;
/** Rules one program holds: their counters fill the state map's per-CPU value (1364). */
export const MAX_RULES = Math.floor((PERCPU_VALUE_MAX - STATE_RULES) / RULE_COUNTERS);
/** Instructions the kernel loads in one program at most (BPF_COMPLEXITY_LIMIT_INSNS, for CAP_BPF). */
export const MAX_PROGRAM_INSNS = 1_000_000;
export const ruleCounterOffset = (rule: number, which: 'matched' | 'acted' | 'dropped'): number =>
  STATE_RULES + RULE_COUNTERS * rule + (which === 'matched' ? 0 : which === 'acted' ? 8 : 16);

/**
 * Objects written by `netmangle build` carry the seed as a u64 global SEED_GLOBAL in section
 * SEED_SECTION; programs compiled with selfSeed read it (a map-value reference to SEED_SECTION).
 */
export const SEED_SECTION = '.rodata';
export const SEED_GLOBAL = 'nm_seed';

/** The shared (not per-CPU) every-N map: one entry, a u64 match count per rule, added atomically. */
export const EVERY_MAP = 'nm_every';

/** bpf_map_update_elem flag: only insert. */
export const BPF_NOEXIST = 1;

/**
 * Per-connection counts (rules with `perConnection`): one LRU hash map, CONN_MAP, for all such
 * rules of a program, of as many entries as the largest `connections` among them; key
 * CONN_KEY_SIZE bytes laid out as CONN_KEY (raw network-order bytes; the endpoint that sorts
 * first is A), value one u64 per such rule (connCountOffset, in GenResult.connRules order): the
 * number of matching packets of that connection so far. An evicted connection starts again
 * from 0 for every rule. CONN_ZERO_MAP is an array of one zero value of the same size, which a
 * new connection's entry is inserted from. One map rather than one per rule: a program may
 * use at most 64 maps, and the entries' headers and keys are paid once.
 */
export const CONN_MAP = 'nm_conn';
export const CONN_ZERO_MAP = 'nm_conn_zero';
export const CONN_KEY_SIZE = 40;
export const CONN_KEY = { addrA: 0, addrB: 16, portA: 32, portB: 34, proto: 36, family: 37 } as const;
export const connCountOffset = (position: number): number => 8 * position;

/**
 * Connections with packets held by `reorder` (shared by the group's reorder rules), key
 * CONN_KEY, value a u64, by HoldTargets.heldBy: 'count': the connection's packets in the delay
 * line (the program adds 1 when it sends one to be held, whoever holds it takes 1 away when it
 * leaves; a hash map); 'time': the bpf_ktime_get_ns deadline (held + the rule's timeout) the
 * program writes alone (an LRU map). While the count is above 0 or the deadline not passed,
 * every other packet of the connection that the rules let pass goes through the delay line too
 * (sent on at once), which counts them.
 */
export const HELD_MAP = 'nm_held';
export const HELD_CONNECTIONS = 65536;
/** The tag (HoldTargets.tags) of packets that go through the delay line as followers of `reorder`; hold specs are 0, 1, …. */
export const HOLD_FOLLOWER_TAG = 0xfff;
/** At most this many distinct holds (delays and reorders) per interface and hook. */
export const MAX_HOLD_SPECS = 64;

/**
 * The shared (not per-CPU) time map of rules with limit, for or start-after: one entry, per
 * rule 16 bytes: u64 the rule's start (ktime + 1 of its first matching packet, 0 until then),
 * u64 the rate limit's theoretical arrival time (ktime + 1 based).
 */
export const TIME_MAP = 'nm_time';
export const TIME_RULE_SIZE = 16;
export const timeStartOffset = (rule: number): number => TIME_RULE_SIZE * rule;
export const timeTatOffset = (rule: number): number => TIME_RULE_SIZE * rule + 8;
