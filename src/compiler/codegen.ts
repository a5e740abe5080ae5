/**
 * Rules to eBPF. One program per (interface, hook): the headers are parsed once, then every
 * rule is evaluated in order. Register plan, kept for the whole program:
 *
 *   r6  the context (xdp_md or __sk_buff); during the parse, and with a single rule until it
 *       matches, the context stays in r1 (so packets that match nothing never copy it)
 *   r7  packet pointer to the L3 header; valid when ip or ipv6 is present, and then the whole
 *       fixed header (20 or 40 bytes) lies before data_end
 *   r8  packet pointer to the L4 header; valid when tcp, udp, icmp or icmpv6 is present, and
 *       then its whole fixed header (20 or 8 bytes) lies before data_end
 *   r9  bit set of the layers present (LAYER_BIT)
 *   r0-r5  temporaries; helper calls clobber them, so nothing lives in them across a call.
 *
 * So IP and L4 fields are one load each: the verifier knows r9 on every path (the parser sets
 * it from constants), so it knows which of r7/r8 are checked pointers wherever a field is
 * read. bpf_l4_csum_replace (tc only) may move packet data, which turns r7/r8 into unknowns
 * for the verifier: after each call they are derived again from offsets saved just before it
 * (reloadHeaders). Ethernet and VLAN fields are read from the packet start, checked per read.
 *
 * The parser is specialised to the rules (see parse()): only headers some rule needs, an
 * untagged-IPv4 fast path with one bounds check, and an early return where no rule can match
 * the layers found. Code nothing reaches is left out (ReachableAssembler).
 *
 * A layer is present only when its whole fixed header is in the frame; a field whose layer is
 * absent makes its comparison false and its rule's actions skip. Raw words are compared in
 * the register layout of a little-endian load (x86-64, arm64), which saves byte swaps.
 *
 * Stack: fp-8 state map value pointer (0 until looked up), fp-16 every-N map value pointer,
 * fp-24 map key, fp-20/-18 the L3 and L4 offsets (u16, for reloadHeaders), fp-32/-40 a
 * write's old and new words, fp-48 the XDP frame length, fp-64 and down (24 slots of 16
 * bytes, to fp-448): the values of a rule's `set` actions, computed before any write so that
 * every right-hand side reads the packet as it was before the rule touched it; fp-480 the
 * per-connection key (40 bytes, see connKey), fp-488 the zero count a new connection starts with.
 */
import { Assembler, imm, type AluOp, type JmpOp, type Operand } from '../bpf/asm.js';
import type { Insn } from '../bpf/insn.js';
import { BPF_ADD, BPF_CMPXCHG, BPF_EXIT, BPF_FETCH, BPF_JMP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, type Reg } from '../bpf/opcodes.js';
import type { Action, Cond, Expr, FieldDef, Hook, Layer, Rule, RuleGroup } from '../rules/ast.js';
import { HEADER_SIZE } from '../rules/catalog.js';
import { NetmangleError } from '../errors.js';
import {
  BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, DELAYED_MARK_BASE, DELAYED_MARK_MASK, HELD_MAP, DUPLICATE_TC_INDEX, CONN_KEY, CONN_KEY_SIZE, CTX, CONN_MAP, CONN_ZERO_MAP, EVERY_MAP, HELPER, LAYER_BIT, SEED_SECTION, SKB,
  STATE_GSO, STATE_MAP, STATE_PRNG, TIME_MAP, connCountOffset, timeStartOffset, timeTatOffset, progKindOf, ruleCounterOffset, verdicts, type ProgKind,
} from './layout.js';
import { probabilityThreshold } from './prng.js';

/** A compiler limit or an internal inconsistency, reported with the rule it concerns. */
export class CompileError extends NetmangleError {}

const CTXR = R6, L3 = R7, L4 = R8, LAYERS = R9, FP = R10;
const SLOT_STATE = -8;
const SLOT_EVERY = -16;
const SLOT_KEY = -24;
/** Raw old and new words of the write in progress, for the checksum delta. */
const SLOT_OLD = -32;
const SLOT_NEW = -40;
/** XDP frame length, read once at the start when a rule uses frame.len. */
const SLOT_FLEN = -48;
/** First `set` value slot; each takes 16 bytes (room for an IPv6 address). */
const SLOT_SETS = -64;
const MAX_SETS = 24;
/** Per-connection map key (CONN_KEY_SIZE bytes), below the set slots, and a zero value to insert. */
const SLOT_CONN_KEY = -480;
const SLOT_CONN_VALUE = -488;
/** `corrupt`: payload offset from the packet start and length (in the set slots, free by then). */
const SLOT_PAYLOAD_OFF = -64;
const SLOT_PAYLOAD_LEN = -56;

/** `truncate`: frame length before the cut, the helper's result, a new length field's value, the cut payload's sum (set slots, free by then). */
const SLOT_CUT_FRAME_LEN = -72;
const SLOT_CUT_RESULT = -80;
const SLOT_CUT_VALUE = -88;
const SLOT_CUT_SUM = -96;
const SLOT_CUT_POS = -104;
const SLOT_CUT_END = -112;
const SLOT_CUT_COUNT = -120;
/** TRUNCATE_CHUNK-byte buffer (in the set slots) the cut payload is copied to, chunk by chunk. */
const SLOT_CUT_BUF = -384;
/** `truncate` sums the cut payload in chunks of this many bytes (bpf_csum_diff), at most TRUNCATE_CHUNKS of them. */
const TRUNCATE_CHUNK = 256;
const TRUNCATE_CHUNKS = 64;

/** `reject` (TCP): what the answer needs, in the set slots (a rule with reject has none). */
const REJ_SADDR = -80; // 16 bytes, to -64
const REJ_DADDR = -96; // 16 bytes
const REJ_PORTS = -104;
const REJ_SEQ = -112;
const REJ_ACK = -120;
const REJ_FLAGS = -128;
const REJ_L3OFF = -136;
const REJ_NEWLEN = -144;
const REJ_QUOTE = -152;
const XDP_TX = 3;
/** ICMP destination unreachable codes (RFC 792, RFC 1812) of `reject with`. */
/** ICMPv6 answers of `reject with` (RFC 4443): destination unreachable codes; proto-unreachable as a parameter problem at the next-header field. */
const ICMP6_UNREACH: Record<string, { type: number; code: number; pointer: number }> = {
  'net-unreachable': { type: 1, code: 0, pointer: 0 },
  'admin-prohibited': { type: 1, code: 1, pointer: 0 },
  'host-unreachable': { type: 1, code: 3, pointer: 0 },
  'port-unreachable': { type: 1, code: 4, pointer: 0 },
  'proto-unreachable': { type: 4, code: 1, pointer: 6 },
};
const ICMP4_UNREACH_CODE: Record<string, number> = { 'net-unreachable': 0, 'host-unreachable': 1, 'proto-unreachable': 2, 'port-unreachable': 3, 'admin-prohibited': 13 };

/** The rule's clock (clock()): the time map value pointer and now + 1, during the trigger only. */
const SLOT_TIME_PTR = -72;
const SLOT_NOW = -80;

/** Saved L3 and L4 offsets from the packet start (u16 each), for reloadHeaders. */
const SLOT_L3_OFF = -20;
const SLOT_L4_OFF = -18;

/** EtherTypes and masks as a 16-bit little-endian load of the network-order bytes gives them. */
const RAW_ETH_P_IP = 0x0008, RAW_ETH_P_IPV6 = 0xdd86, RAW_ETH_P_8021Q = 0x0081, RAW_ETH_P_8021AD = 0xa888;
/** IPv4 fragment offset (the low 13 bits of bytes 6-7) and IPv6 fragment offset (the high 13 bits of bytes 2-3). */
const RAW_IP_OFFSET_MASK = 0xff1f, RAW_IP6_OFFSET_MASK = 0xf8ff;
/** The first 8 bytes of an IPv4 header loaded as one u64: version/IHL (byte 0) and fragment offset (bytes 6-7). */
const RAW_IP_FIRST_8_MASK = 0xff1f_0000_0000_00ffn;
const IP_PROTO = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58 } as const;
/**
 * A bit of r9 beside the layers (LAYER_BIT): the L4 header is that of a first fragment behind
 * an IPv6 fragment header with M set. Set only when a rule reads tcp.len, which a fragment
 * does not have.
 */
const FRAGMENT_BIT = 1 << 8;
/** The IPv4 MF flag as a byte load of byte 6 of the header gives it. */
const RAW_IP_MF_BYTE = 0x20;
/** IPv6 extension headers walked before the L4 header, at most this many. */
const IPV6_EXT_MAX = 6;
/** A `pass` block is placed before the first rule that starts this many instructions after the first jump to it: a 16-bit jump reaches 32,767, which leaves room for the rule then being compiled. */
const PASS_ISLAND_REACH = 16_000;

/** Resolves the two halves of an `either` field (`ip.addr` → ip.src, ip.dst). */
export type FieldLookup = (name: string) => FieldDef | undefined;

export interface GenOptions {
  lookupField: FieldLookup;
  /**
   * For objects loaded by other tools (libbpf creates maps empty): when the PRNG state is still
   * zero, seed it from the `.rodata` global SEED_GLOBAL and the CPU number, exactly as
   * CompiledProgram.initialState() would have (splitmix64 of seed + (cpu << 32)).
   */
  selfSeed?: boolean;
  /** Where `delay` and `reorder` send packets (the delay line's TAP devices; live sessions and replay). */
  hold?: HoldTargets;
}

/**
 * The delay line's devices (src/delay/) as ifindexes the program redirects to: replay gives
 * numbers of its own and reads them back from the redirect verdicts.
 */
export interface HoldTargets {
  /** For each rule index with `delay` or `reorder`: where that rule's packets go to be held. */
  rule: ReadonlyMap<number, number>;
  /** Where the other packets of a connection with packets held by `reorder` go (sent on at once). */
  follower?: number;
  /** The mark packets sent on by this line carry (layout.ts delayedMark). */
  mark: number;
  /**
   * How `reorder` marks a connection in HELD_MAP: 'count' (default) of held packets, which
   * whoever holds them takes back as they leave (replay: exact and the same on every engine), or
   * 'time': a deadline the program alone writes (live: the delay line never touches the map,
   * so no count can be lost or left behind; followers go through the line until the deadline).
   */
  heldBy?: 'count' | 'time';
  /**
   * Live: every packet goes to one device, tagged (toDelayLine) with its hold spec's number or
   * the followers' tag, so the delay line reads them all in the order they came.
   */
  tags?: { rule: ReadonlyMap<number, number>; follower: number };
}

/** Bytes of the tag toDelayLine puts in front of a packet's EtherType, and of the two MAC addresses before it. */
const HOLD_TAG_SIZE = 4;
const ETH_ADDRS = 12;

const holdsPacket = (r: Rule): boolean => r.actions.some((x) => x.kind === 'delay' || x.kind === 'reorder');

export interface GenResult {
  asm: Assembler;
  /** Whether the program uses the every-N map (shared match counts per rule). */
  usesEvery: boolean;
  /** Rules (by index) whose counts are kept per connection, in this order in CONN_MAP's values. */
  connRules: number[];
  /** Whether the program uses the time map (TIME_MAP: start times and rate limits per rule). */
  usesTime: boolean;
  /** Whether the program uses HELD_MAP (some rule has `reorder`). */
  usesHeld: boolean;
}

/**
 * An Assembler that leaves out code nothing reaches, which the kernel refuses ("unreachable
 * insn"): what follows a `ja` or `exit` up to the next label some jump names. It arises from
 * rules after an unconditional `drop`/`pass`, matches that cannot hold (`not frame`, two L4
 * protocols at once) and parse ends where no rule can match. The code generator jumps
 * backward only to code already known to be reached, so when a label is placed after
 * left-out code, every jump that could make it reachable is already known.
 */
class ReachableAssembler extends Assembler {
  private dead = false;
  private readonly targeted = new Set<string>();
  /** Labels placed where code is reached: the only ones a backward jump may name. */
  private readonly live = new Set<string>();

  override label(name: string): this {
    if (this.targeted.has(name)) this.dead = false;
    if (!this.dead) this.live.add(name);
    return super.label(name);
  }

  override raw(insn: Insn): this {
    if (this.dead) return this;
    super.raw(insn);
    if (insn.code === (BPF_JMP | BPF_EXIT)) this.dead = true;
    return this;
  }

  private target(name: string): void {
    if (this.hasLabel(name) && !this.live.has(name)) throw new CompileError(`internal: jump back to left-out code at ${name}`);
    this.targeted.add(name);
  }

  override jmp(op: JmpOp, dst: Reg, v: Operand, target: string): this {
    if (this.dead) return this;
    this.target(target);
    return super.jmp(op, dst, v, target);
  }

  override jmp32(op: JmpOp, dst: Reg, v: Operand, target: string): this {
    if (this.dead) return this;
    this.target(target);
    return super.jmp32(op, dst, v, target);
  }

  override ja(target: string): this {
    if (this.dead) return this;
    this.target(target);
    super.ja(target);
    this.dead = true;
    return this;
  }

  override ldMap(dst: Reg, name: string): this {
    return this.dead ? this : super.ldMap(dst, name);
  }

  override ldMapValue(dst: Reg, name: string, offset = 0): this {
    return this.dead ? this : super.ldMapValue(dst, name, offset);
  }
}

export function generate(group: RuleGroup, opts: GenOptions): GenResult {
  const g = new Gen(group.hook, opts);
  g.program(group.rules);
  return { asm: g.a, usesEvery: g.usesEvery, connRules: g.connRules, usesTime: g.usesTime, usesHeld: g.usesHeld };
}

class Gen {
  readonly a: Assembler = new ReachableAssembler();
  readonly kind: ProgKind;
  readonly hook: Hook;
  usesEvery = false;
  usesTime = false;
  usesHeld = false;
  readonly connRules: number[] = [];
  private labelN = 0;
  private free: Reg[] = [R1, R2, R3, R4, R5, R0];
  private readonly v: { none: number; pass: number; drop: number };
  private rule?: Rule;
  /** Layers some rule reads, writes, tests or fixes a checksum in. */
  private wanted = new Set<Layer>();
  /** Some rule reads tcp.len: the IPv6 walk then marks a fragment header in r9 (FRAGMENT_BIT). */
  private readsTcpLen = false;
  /** Per rule, the layers its match needs present. */
  private required: Array<Set<Layer>> = [];
  /** Parse ends jumped to, emitted after the parser: label → layers, and whether reached only untagged. */
  private readonly ends = new Map<string, { layers: Layer[]; untagged: boolean }>();
  /** Emitting the untagged fast path, where r9 is not yet initialised. */
  private untagged = false;
  /** L4 header checks jumped to: label, L3 layer, L4 layer, reached only from the untagged fast path. */
  private readonly l4Blocks: Array<[string, 'ip' | 'ipv6', L4Layer, boolean]> = [];
  /** Layers present on every path that reaches the rules. */
  private atRules?: Set<Layer>;
  /** Whether map value pointers are cached on the stack across rules (more than one rule). */
  private cacheMaps = false;
  /** Whether the context is still in r1 during the parse (moved to r6 after it). */
  private ctxInR1 = true;
  /**
   * Where the context is while rule code runs: r6, or r1 until the only rule has matched (a
   * packet that does not match then never pays for the copy). r1 is then kept out of the
   * temporaries.
   */
  private ctx: Reg = CTXR;
  private rulesCount = 0;

  constructor(hook: Hook, private readonly opts: GenOptions) {
    this.hook = hook;
    this.kind = progKindOf(hook);
    this.v = verdicts(this.kind);
  }

  private fresh(what: string): string {
    return `${what}_${++this.labelN}`;
  }

  private alloc(): Reg {
    const r = this.free.shift();
    if (r === undefined) {
      throw new CompileError(`rule "${this.rule?.name}": expression too deeply nested (more than 6 values pending at once)`, {
        hint: 'split the expression, or compute part of it in a separate rule',
        exitCode: 2,
      });
    }
    return r;
  }

  private release(...regs: Reg[]): void {
    for (const r of regs) if (!this.free.includes(r)) this.free.unshift(r);
  }

  // ---------------------------------------------------------------- program

  program(rules: Rule[]): void {
    const a = this.a;
    this.wanted = wantedLayers(rules);
    this.required = rules.map((r) => requiredLayers(r.match));
    this.cacheMaps = rules.length > 1;
    this.rulesCount = rules.length;
    const specials = JSON.stringify(rules, (k, v) => (k === 'field' && v?.special ? v.special : v));
    this.readsTcpLen = specials.includes('"tcp.len"');
    // tcp.len reads the frame length too, for IPv4 with ip.len 0 (segmentation offload).
    if (this.kind === 'xdp' && (specials.includes('"frame.len"') || this.readsTcpLen)) {
      // bpf_xdp_get_buff_len: the verifier forbids arithmetic on data_end, so ask the kernel.
      this.ctxInR1 = false;
      a.mov64(CTXR, R1).call(HELPER.xdp_get_buff_len).stx(8, FP, SLOT_FLEN, R0);
    }
    if (this.kind !== 'xdp' && rules.some((r) => r.actions.some((x) => x.kind === 'duplicate'))) {
      // Copies this program sent come back through the same hook: let them pass untouched.
      const ctx = this.ctxInR1 ? R1 : CTXR;
      const original = this.fresh('not_a_copy');
      a.ldx(4, R2, ctx, SKB.tcIndex).jmp('jne', R2, imm(DUPLICATE_TC_INDEX), original);
      a.movImm(R2, 0).stx(4, ctx, SKB.tcIndex, R2).movImm(R0, this.v.none).exit();
      a.label(original);
    }
    if (rules.some(holdsPacket)) {
      const hold = this.opts.hold;
      const missing = rules.findIndex((r, i) => holdsPacket(r) && hold?.rule.get(i) === undefined);
      if (!hold || missing >= 0) {
        throw new CompileError('delay and reorder run only where a delay line holds the packets (netmangle run or replay); here they are not supported', { hint: 'build cannot hold packets: leave the delay or reorder rule out' });
      }
      this.usesHeld = rules.some((r) => r.actions.some((x) => x.kind === 'reorder'));
      if (this.usesHeld && hold.follower === undefined) throw new CompileError('internal: reorder without a follower device');
      if (this.kind !== 'xdp') {
        // Packets back from the delay line come through this hook again: let them pass untouched.
        // (At xdp they come back after it, at tc ingress.) Another line's packets pass as they are.
        const ctx = this.ctxInR1 ? R1 : CTXR;
        const fresh = this.fresh('not_delayed'), others = this.fresh('other_line');
        a.ldx(4, R2, ctx, SKB.mark).mov32(R3, R2).alu32('and', R3, imm(DELAYED_MARK_MASK | 0)).jmp32('jne', R3, imm(DELAYED_MARK_BASE), fresh);
        a.jmp32('jne', R2, imm(hold.mark), others);
        a.movImm(R2, 0).stx(4, ctx, SKB.mark, R2);
        a.label(others).movImm(R0, this.v.none).exit();
        a.label(fresh);
      }
    }
    this.parse();
    if (this.cacheMaps) a.st(8, FP, SLOT_STATE, 0).st(8, FP, SLOT_EVERY, 0);
    rules.forEach((rule, i) => {
      this.passIslandIfFar();
      this.compileRule(rule, i);
    });
    a.label('verdict_none');
    if (this.usesHeld) this.followHeld();
    a.movImm(R0, this.v.none).exit();
    if (this.passIsland) this.emitPassIsland();
  }

  /**
   * Where `pass` goes when packets may follow held ones (followHeld, then the pass verdict): a
   * block placed after the rules that jump to it, and before they get further from it than a
   * 16-bit jump reaches. `pass` rules jump to the current one; when the code has grown
   * PASS_ISLAND_REACH instructions since its first jump, it is emitted (jumped over) and the
   * next `pass` starts another.
   */
  private passIsland?: { label: string; from: number };

  private passTarget(): string {
    this.passIsland ??= { label: this.fresh('verdict_pass'), from: this.a.length };
    return this.passIsland.label;
  }

  private passIslandIfFar(): void {
    if (!this.passIsland || this.a.length - this.passIsland.from < PASS_ISLAND_REACH) return;
    const over = this.fresh('after_pass');
    this.a.ja(over);
    this.emitPassIsland();
    this.a.label(over);
  }

  private emitPassIsland(): void {
    this.a.label(this.passIsland!.label);
    this.passIsland = undefined;
    this.followHeld();
    this.a.movImm(R0, this.v.pass).exit();
  }

  /**
   * A packet the rules let pass: if its connection has packets held by `reorder`, it goes
   * through the delay line too (which counts it and sends it on at once), so the held ones
   * follow it. By count: while the connection's count in HELD_MAP is above 0; by time: until
   * the deadline stored there. Clobbers r0-r5.
   */
  private followHeld(): void {
    const a = this.a;
    const on = this.fresh('not_following');
    this.connKey();
    a.ldMap(R1, HELD_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_CONN_KEY)).call(HELPER.map_lookup_elem);
    a.jmp('jeq', R0, imm(0), on).ldx(8, R1, R0, 0);
    if (this.opts.hold!.heldBy === 'time') {
      a.stx(8, FP, SLOT_CONN_VALUE, R1).call(HELPER.ktime_get_ns).ldx(8, R1, FP, SLOT_CONN_VALUE);
      a.jmp('jle', R1, R0, on);
    } else {
      a.jmp('jeq', R1, imm(0), on);
    }
    this.toDelayLine(this.opts.hold!.follower!, this.opts.hold!.tags?.follower, on);
    a.label(on);
  }

  /**
   * Marks this packet's connection in HELD_MAP (see layout.ts) as having a packet held: adds 1
   * to its count, or (by time) stores now + the rule's timeout as the deadline until which its
   * packets follow through the line. Clobbers r0-r5.
   */
  private countHeld(timeoutNs: number): void {
    const a = this.a;
    this.connKey();
    if (this.opts.hold!.heldBy === 'time') {
      // One store, no read-modify-write: nothing for the delay line to take back, nothing to race.
      a.call(HELPER.ktime_get_ns).ldImm64(R1, timeoutNs).alu64('add', R0, R1).stx(8, FP, SLOT_CONN_VALUE, R0);
      a.ldMap(R1, HELD_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_CONN_KEY));
      a.mov64(R3, FP).alu64('add', R3, imm(SLOT_CONN_VALUE)).movImm(R4, 0).call(HELPER.map_update_elem);
      return;
    }
    const done = this.fresh('held_counted');
    // The map full: the packet is still held, and released by its timeout.
    this.connEntry(HELD_MAP, done);
    a.movImm(R1, 1).atomicAdd(8, R0, 0, R1).label(done);
  }

  /**
   * Redirects the packet to the delay line's device, tagged with `tag` (HoldTargets.tags) as an
   * outermost 802.1ad header the line reads and strips: one device keeps the order of every
   * packet the line gets. The context must be in r6. If the tag cannot be added, the packet
   * goes on to `failed` undelayed.
   */
  private toDelayLine(ifindex: number, tag: number | undefined, failed: string): void {
    const a = this.a;
    if (tag !== undefined && this.kind === 'xdp') {
      // Four bytes in front, the MAC addresses moved into them, the tag after them.
      a.mov64(R1, CTXR).movImm(R2, -HOLD_TAG_SIZE).call(HELPER.xdp_adjust_head).jmp('jne', R0, imm(0), failed);
      this.loadBounds(R2, R3);
      a.mov64(R4, R2).alu64('add', R4, imm(ETH_ADDRS + HOLD_TAG_SIZE)).jmp('jgt', R4, R3, failed);
      a.ldx(8, R4, R2, HOLD_TAG_SIZE).stx(8, R2, 0, R4).ldx(4, R4, R2, 8 + HOLD_TAG_SIZE).stx(4, R2, 8, R4);
      a.st(2, R2, ETH_ADDRS, RAW_ETH_P_8021AD).st(2, R2, ETH_ADDRS + 2, ((tag & 0xff) << 8) | (tag >> 8));
    } else if (tag !== undefined) {
      a.mov64(R1, CTXR).movImm(R2, RAW_ETH_P_8021AD).movImm(R3, tag).call(HELPER.skb_vlan_push).jmp('jne', R0, imm(0), failed);
    }
    a.movImm(R1, ifindex).movImm(R2, 0).call(HELPER.redirect).exit();
  }

  /** dst = packet data pointer, end = data_end (both reloaded from the context). */
  private loadBounds(data: Reg, end: Reg): void {
    const c = CTX[this.kind];
    this.a.ldx(4, data, this.ctx, c.data).ldx(4, end, this.ctx, c.dataEnd);
  }

  /**
   * Fills r7, r8, r9 from the headers. Layers it cannot see stay absent. The parser is
   * specialised to the rules: it walks only headers some rule reads, writes or tests (no IPv6
   * walk for IPv4-only rules, no L4 checks for protocols no rule names), and where it learns
   * that no rule can match the layers found (every rule needs a layer the packet lacks) it
   * returns at once. Comparisons are on raw (little-endian loaded) words: no byte swaps.
   * The context stays in r1 until the parse is over (temporaries: r0, r4, r5), so a packet
   * that no rule can match leaves without ever copying it.
   */
  private parse(): void {
    const a = this.a;
    const w = this.wanted;
    const wantL4v4 = w.has('tcp') || w.has('udp') || w.has('icmp');
    const wantL4v6 = w.has('tcp') || w.has('udp') || w.has('icmpv6');
    const wantIp = w.has('ip') || wantL4v4;
    const wantIpv6 = w.has('ipv6') || wantL4v6;
    const wantVlan = w.has('vlan') || wantIp || wantIpv6;
    const ctx = this.ctxInR1 ? R1 : CTXR;

    a.ldx(4, R2, ctx, CTX[this.kind].data).ldx(4, R3, ctx, CTX[this.kind].dataEnd);
    if (wantIp) {
      // The usual packet first: an untagged IPv4 header wholly in the frame, and the smallest
      // L4 header a rule wants after it, with one bounds check.
      const l4Room = Math.min(20, ...(['tcp', 'udp', 'icmp'] as const).filter((p) => w.has(p)).map((p) => HEADER_SIZE[p]));
      const room = wantL4v4 ? l4Room : 0;
      a.mov64(R4, R2).alu64('add', R4, imm(14 + 20 + room)).jmp('jgt', R4, R3, 'eth');
      a.ldx(2, R5, R2, 12).jmp('jne', R5, imm(RAW_ETH_P_IP), 'eth_not_ip4');
      a.mov64(L3, R2).alu64('add', L3, imm(14));
      this.untagged = true;
      this.ip4(wantL4v4, room);
      this.untagged = false;
      a.label('eth');
    }
    a.movImm(LAYERS, 0);
    a.mov64(R4, R2).alu64('add', R4, imm(14)).jmp('jgt', R4, R3, this.end([]));
    if (!wantVlan) {
      this.finish(['eth']);
    } else {
      a.ldx(2, R5, R2, 12);
      // Up to two VLAN tags (802.1Q, 802.1ad); vlan.* fields read the outer one.
      for (let tag = 0; tag <= 2; tag++) {
        if (wantIp) {
          const other = tag === 0 ? 'eth_not_ip4' : this.fresh('not_ip4');
          a.jmp('jne', R5, imm(RAW_ETH_P_IP), other);
          a.mov64(L3, R2).alu64('add', L3, imm(14 + 4 * tag)).ja('ip4');
          a.label(other);
          // The fast path's other EtherTypes come here, with r9 not yet set.
          if (tag === 0) a.movImm(LAYERS, 0);
        }
        if (wantIpv6) {
          const other = this.fresh('not_ip6');
          a.jmp('jne', R5, imm(RAW_ETH_P_IPV6), other);
          a.mov64(L3, R2).alu64('add', L3, imm(14 + 4 * tag)).ja('ip6');
          a.label(other);
        }
        if (tag === 2) break;
        const noTag = this.end(['eth']);
        const tagged = this.fresh('vlan');
        a.jmp('jeq', R5, imm(RAW_ETH_P_8021Q), tagged).jmp('jne', R5, imm(RAW_ETH_P_8021AD), noTag);
        a.label(tagged);
        a.mov64(R4, R2).alu64('add', R4, imm(18 + 4 * tag)).jmp('jgt', R4, R3, noTag);
        if (tag === 0) a.movImm(LAYERS, LAYER_BIT.vlan);
        a.ldx(2, R5, R2, 16 + 4 * tag);
      }
      this.finish(['eth']);
    }

    // Tagged or short frames: the IPv4 header is checked here, then parsed as above.
    if (wantIp) {
      a.label('ip4');
      a.mov64(R4, L3).alu64('add', R4, imm(20)).jmp('jgt', R4, R3, this.end(['eth']));
      this.ip4(wantL4v4, 0);
    }

    // IPv6 at r7, walking a bounded number of extension headers.
    if (wantIpv6) {
      a.label('ip6');
      a.mov64(R4, L3).alu64('add', R4, imm(40)).jmp('jgt', R4, R3, this.end(['eth']));
      a.ldx(1, R4, L3, 0).alu64('and', R4, imm(0xf0)).jmp('jne', R4, imm(0x60), this.end(['eth']));
      if (!wantL4v6) {
        this.finish(['eth', 'ipv6']);
      } else {
        const noL4 = this.end(['eth', 'ipv6']);
        a.ldx(1, R0, L3, 6).mov64(L4, L3).alu64('add', L4, imm(40));
        for (let i = 0; i < IPV6_EXT_MAX; i++) {
          const next = this.fresh('ext');
          const frag = this.fresh('frag');
          const ah = this.fresh('ah');
          const generic = this.fresh('opt');
          this.l4Dispatch(['tcp', 'udp', 'icmpv6'], 'ipv6');
          a.jmp('jeq', R0, imm(0), generic).jmp('jeq', R0, imm(43), generic).jmp('jeq', R0, imm(60), generic);
          a.jmp('jeq', R0, imm(44), frag).jmp('jne', R0, imm(51), noL4);
          // Authentication header: length in 4-octet units, not counting the first 2.
          a.label(ah);
          a.mov64(R4, L4).alu64('add', R4, imm(8)).jmp('jgt', R4, R3, noL4);
          a.ldx(1, R0, L4, 0).ldx(1, R4, L4, 1).alu64('add', R4, imm(2)).alu64('lsh', R4, imm(2)).alu64('add', L4, R4).ja(next);
          // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first 8.
          a.label(generic);
          a.mov64(R4, L4).alu64('add', R4, imm(8)).jmp('jgt', R4, R3, noL4);
          a.ldx(1, R0, L4, 0).ldx(1, R4, L4, 1).alu64('add', R4, imm(1)).alu64('lsh', R4, imm(3)).alu64('add', L4, R4).ja(next);
          // Fragment header: 8 bytes; only the first fragment carries the L4 header.
          a.label(frag);
          a.mov64(R4, L4).alu64('add', R4, imm(8)).jmp('jgt', R4, R3, noL4);
          a.ldx(2, R4, L4, 2).alu64('and', R4, imm(RAW_IP6_OFFSET_MASK)).jmp('jne', R4, imm(0), noL4);
          if (this.readsTcpLen) {
            // M set: a first fragment. Without it (an atomic fragment, RFC 6946) the segment is whole.
            const whole = this.fresh('frag_whole');
            a.ldx(1, R4, L4, 3).alu64('and', R4, imm(1)).jmp('jeq', R4, imm(0), whole).alu64('or', LAYERS, imm(FRAGMENT_BIT));
            a.label(whole);
          }
          a.ldx(1, R0, L4, 0).alu64('add', L4, imm(8));
          a.label(next);
          // Forget how r8 was reached: without this the verifier follows every sequence of
          // extension headers through all the rules (exponential in IPV6_EXT_MAX); with it, one.
          a.mov64(R4, L4).alu64('sub', R4, R2).alu64('and', R4, imm(0x3fff)).mov64(L4, R2).alu64('add', L4, R4);
        }
        this.l4Dispatch(['tcp', 'udp', 'icmpv6'], 'ipv6');
        this.finish(['eth', 'ipv6']);
      }
    }

    for (const [label, l3, l4, untagged] of this.l4Blocks) {
      a.label(label);
      this.untagged = untagged;
      this.l4Header(l3, l4);
    }
    this.untagged = false;
    // Parse ends that other code jumps to.
    for (const [label, { layers, untagged }] of this.ends) {
      a.label(label);
      this.untagged = untagged;
      this.finish(layers);
    }
    this.untagged = false;
    // Packets no rule can match leave here, close by: a jump to the program's end could
    // exceed the 16-bit jump offset with many rules.
    a.label('parse_none').movImm(R0, this.v.none).exit();
    a.label('parsed');
    if (this.ctxInR1 && this.rulesCount === 1 && !this.opts.hold?.tags) {
      this.ctx = R1;
      this.free = this.free.filter((r) => r !== R1);
    } else if (this.ctxInR1) {
      a.mov64(CTXR, R1);
    }
  }

  /**
   * The IPv4 header at r7, known to be in the frame (and `room` bytes after a 20-byte header):
   * version and header length checked, r8 set past the options, L4 only in the first fragment.
   * When every rule needs an L4 layer, the protocol is read first, so a packet of a protocol
   * no rule names leaves after one compare, and each wanted protocol gets its own header code.
   * Emitted twice: for the fast path (untagged, `room` checked) and for all other frames.
   */
  private ip4(wantL4: boolean, room: number): void {
    const a = this.a;
    const protoFirst = wantL4 && !this.canMatch(['eth', 'ip']);
    if (!protoFirst) {
      this.ip4HeaderLength(wantL4);
      if (!wantL4) {
        this.finish(['eth', 'ip']);
        return;
      }
      a.ldx(1, R0, L3, 9);
      this.l4Dispatch(['tcp', 'udp', 'icmp'], 'ip');
      this.finish(['eth', 'ip']);
      return;
    }
    const wanted = (['tcp', 'udp', 'icmp'] as const).filter((p) => this.wanted.has(p));
    a.ldx(1, R0, L3, 9);
    wanted.forEach((p, i) => {
      const next = this.fresh('ip4_not');
      const options = this.fresh('ip4_options');
      a.jmp('jne', R0, imm(IP_PROTO[p]), i < wanted.length - 1 ? next : this.end(['eth', 'ip']));
      // The usual header: version 4, no options, not a later fragment; one 8-byte load tests
      // byte 0 and the fragment offset together. The L4 header follows, maybe known in the frame.
      a.ldx(8, R4, L3, 0).ldImm64(R5, RAW_IP_FIRST_8_MASK).alu64('and', R4, R5).jmp('jne', R4, imm(0x45), options);
      a.mov64(L4, L3).alu64('add', L4, imm(20));
      if (room < HEADER_SIZE[p]) a.mov64(R4, L4).alu64('add', R4, imm(HEADER_SIZE[p])).jmp('jgt', R4, R3, this.end(['eth', 'ip']));
      this.finish(['eth', 'ip', p]);
      a.label(options);
      a.ldx(1, R4, L3, 0);
      a.mov64(R5, R4).alu64('and', R5, imm(0xf0)).jmp('jne', R5, imm(0x40), this.end(['eth']));
      a.alu64('and', R4, imm(0x0f)).jmp('jlt', R4, imm(5), this.end(['eth']));
      a.alu64('lsh', R4, imm(2)).mov64(L4, L3).alu64('add', L4, R4);
      this.l4Header('ip', p, false);
      a.label(next);
    });
  }

  /** Checks version and header length of the IPv4 header at r7 (r4 scratch); with `setL4`, points r8 past it. */
  private ip4HeaderLength(setL4: boolean): void {
    const a = this.a;
    const ok = this.fresh('ip4_ok');
    a.ldx(1, R4, L3, 0);
    // The usual header: version 4, no options.
    if (setL4) a.mov64(L4, L3).alu64('add', L4, imm(20));
    a.jmp('jeq', R4, imm(0x45), ok);
    a.mov64(R5, R4).alu64('and', R5, imm(0xf0)).jmp('jne', R5, imm(0x40), this.end(['eth']));
    a.alu64('and', R4, imm(0x0f)).jmp('jlt', R4, imm(5), this.end(['eth']));
    if (setL4) a.alu64('lsh', R4, imm(2)).mov64(L4, L3).alu64('add', L4, R4);
    a.label(ok);
  }

  /**
   * The L4 header at r8 (IPv4: only in a first fragment): present only when its whole fixed
   * header is in the frame (checked here unless `inFrame` says the caller did), so a rule
   * never writes a field whose checksum lies beyond the end.
   */
  private l4Header(l3: 'ip' | 'ipv6', l4: L4Layer, inFrame = false): void {
    const a = this.a;
    if (l3 === 'ip') {
      a.ldx(2, R4, L3, 6).alu64('and', R4, imm(RAW_IP_OFFSET_MASK)).jmp('jne', R4, imm(0), this.end(['eth', 'ip']));
    }
    if (!inFrame) a.mov64(R4, L4).alu64('add', R4, imm(HEADER_SIZE[l4])).jmp('jgt', R4, R3, this.end(['eth', l3]));
    this.finish(['eth', l3, l4]);
  }

  /** Jumps to the L4 header checks of the wanted protocols (r0 holds the protocol number). */
  private l4Dispatch(protocols: Array<'tcp' | 'udp' | 'icmp' | 'icmpv6'>, l3: 'ip' | 'ipv6'): void {
    for (const p of protocols) {
      if (!this.wanted.has(p)) continue;
      const label = `l4_${p}_${l3}${this.untagged ? '_untagged' : ''}`;
      if (!this.l4Blocks.some(([l]) => l === label)) this.l4Blocks.push([label, l3, p, this.untagged]);
      this.a.jmp('jeq', R0, imm(IP_PROTO[p]), label);
    }
  }

  /** A label that ends the parse with these layers (emitted after the parser's code). */
  private end(layers: Layer[]): string {
    if (!this.canMatch(layers)) return 'parse_none';
    const label = `end${this.untagged ? '_untagged' : ''}_${layers.join('_') || 'none'}`;
    if (!this.ends.has(label)) this.ends.set(label, { layers, untagged: this.untagged });
    return label;
  }

  /** Ends the parse here with these layers: on to the rules, or out when none can match. */
  private finish(layers: Layer[]): void {
    if (!this.canMatch(layers)) {
      this.a.ja('parse_none');
      return;
    }
    this.atRules = this.atRules ? new Set(layers.filter((l) => this.atRules!.has(l))) : new Set(layers);
    const bits = layers.reduce((b, l) => b | (l === 'frame' ? 0 : LAYER_BIT[l]), 0);
    // On the untagged fast path r9 is set here at once; elsewhere it may hold the VLAN bit.
    if (this.untagged) this.a.movImm(LAYERS, bits);
    else if (bits) this.a.alu64('or', LAYERS, imm(bits));
    this.a.ja('parsed');
  }

  /** Whether some rule can match a packet with these layers (and maybe a VLAN tag). */
  private canMatch(layers: Layer[]): boolean {
    const have = new Set<Layer>([...layers, 'frame', 'vlan']);
    return this.required.some((need) => [...need].every((l) => have.has(l)));
  }

  /**
   * After bpf_l4_csum_replace (which may move packet data), r7 and r8 are packet pointers no
   * longer: derive them again from the offsets saved after the parse, with the bounds checks
   * the verifier wants (they cannot fail: the packet did not shrink). Only reached where an
   * L4 layer, and so an L3 one, is present; fixL4 saves the offsets just before each call.
   */
  private reloadHeaders(): void {
    const a = this.a;
    this.loadBounds(R2, R3);
    const v4 = this.fresh('reload_v4');
    const checkL3 = this.fresh('reload_l3');
    a.ldx(2, R1, FP, SLOT_L3_OFF).alu64('and', R1, imm(0x3fff)).mov64(L3, R2).alu64('add', L3, R1);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4);
    a.mov64(R1, L3).alu64('add', R1, imm(40)).ja(checkL3);
    a.label(v4).mov64(R1, L3).alu64('add', R1, imm(20));
    const fail = this.fresh('reload_fail');
    const ok = this.fresh('reloaded');
    a.label(checkL3).jmp('jgt', R1, R3, fail);
    const tcp = this.fresh('reload_tcp');
    const checkL4 = this.fresh('reload_l4');
    a.ldx(2, R1, FP, SLOT_L4_OFF).alu64('and', R1, imm(0x3fff)).mov64(L4, R2).alu64('add', L4, R1);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp), tcp);
    a.mov64(R1, L4).alu64('add', R1, imm(8)).ja(checkL4);
    a.label(tcp).mov64(R1, L4).alu64('add', R1, imm(20));
    a.label(checkL4).jmp('jgt', R1, R3, fail).ja(ok);
    // Cannot happen (the packet did not shrink); here rather than at the program's end, which
    // may be beyond a 16-bit jump.
    a.label(fail).movImm(R0, this.v.none).exit();
    a.label(ok);
  }

  // ---------------------------------------------------------------- rules

  private compileRule(rule: Rule, index: number): void {
    const a = this.a;
    this.rule = rule;
    const next = `rule${index}_end`;
    a.label(`rule${index}`); // no code: marks where the rule starts, for listings and --emit c
    const known = this.condFalse(rule.match, next, this.atRules ?? new Set());
    if (this.ctx === R1) {
      // The only rule matched: from here on helpers clobber r1, so the context moves to r6.
      a.mov64(CTXR, R1);
      this.ctx = CTXR;
      this.release(R1);
    }
    this.ensureState(next);
    this.bumpCounter(index, 'matched', true);
    if (this.hook === 'egress') this.countGso();
    this.trigger(rule, index, next);

    const sets = rule.actions.filter((x): x is Extract<Action, { kind: 'set' }> => x.kind === 'set');
    if (sets.length > MAX_SETS) {
      throw new CompileError(`rule "${rule.name}" sets ${sets.length} fields; at most ${MAX_SETS} fit in one rule`, {
        hint: 'split it into several rules with the same match',
      });
    }
    // Right-hand sides first, against the unmodified packet.
    sets.forEach((s, k) => this.computeSet(s, SLOT_SETS - 16 * k, next, known));
    sets.forEach((s, k) => this.writeSet(s, SLOT_SETS - 16 * k, rule.checksum === 'fix', known));
    for (const act of rule.actions) {
      if (act.kind === 'corrupt') this.corrupt(act.bits, rule.checksum === 'fix', known);
      else if (act.kind === 'truncate') this.truncate(act.length, rule.lengths !== 'keep', rule.checksum === 'fix');
      else if (act.kind === 'duplicate') this.duplicate(act.count);
    }
    if (holdsPacket(rule)) {
      // To the delay line's TAP (its transmit side, which netmangle reads); it comes back marked.
      const reorder = rule.actions.find((x): x is Extract<Action, { kind: 'reorder' }> => x.kind === 'reorder');
      if (reorder) this.countHeld(reorder.timeoutNs);
      this.bumpCounter(index, 'acted');
      // Not tagged (no room): the packet goes on undelayed.
      const untagged = this.fresh('untagged');
      this.toDelayLine(this.opts.hold!.rule.get(index)!, this.opts.hold!.tags?.rule.get(index), untagged);
      a.label(untagged).movImm(R0, this.v.none).exit();
      a.label(next);
      this.rule = undefined;
      return;
    }
    // A cut may remove headers: later rules test for every layer again.
    if (rule.actions.some((x) => x.kind === 'truncate')) this.atRules = new Set();
    this.bumpCounter(index, 'acted');
    const final = rule.actions.find((x) => x.kind === 'drop' || x.kind === 'pass' || x.kind === 'reject');
    if (final?.kind === 'reject') {
      const answer = final.with ?? 'default';
      if (answer === 'tcp-reset' && !known.has('tcp')) {
        throw new CompileError(`rule "${rule.name}": reject with tcp-reset answers TCP only, and this match does not need tcp`, { hint: 'add tcp to the match, or reject with an ICMP code', exitCode: 2 });
      }
      const tcpToo = answer === 'default' || answer === 'tcp-reset';
      this.bumpCounter(index, 'dropped');
      if (tcpToo && known.has('tcp')) {
        this.rejectTcp();
      } else {
        const icmp = this.fresh('reject_icmp');
        if (tcpToo) a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp), icmp + '_tcp');
        a.ja(icmp);
        if (tcpToo) {
          a.label(icmp + '_tcp');
          this.rejectTcp();
        }
        a.label(icmp);
        const word = answer === 'default' || answer === 'tcp-reset' ? 'port-unreachable' : answer;
        // The packet's IP version picks ICMP or ICMPv6; without IP there is nobody to answer.
        const v6 = this.fresh('reject_icmp6'), v4 = this.fresh('reject_icmp4');
        if (!known.has('ip')) a.jmp('jset', LAYERS, imm(LAYER_BIT.ipv6), v6);
        if (!known.has('ipv6')) a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4);
        a.movImm(R0, this.v.drop).exit();
        if (!known.has('ipv6')) {
          a.label(v4);
          this.rejectIcmp4(ICMP4_UNREACH_CODE[word]!);
        }
        if (!known.has('ip')) {
          a.label(v6);
          this.rejectIcmp6(ICMP6_UNREACH[word]!);
        }
      }
    } else if (final?.kind === 'drop') {
      this.bumpCounter(index, 'dropped');
      a.movImm(R0, this.v.drop).exit();
    } else if (final?.kind === 'pass') {
      if (this.usesHeld) a.ja(this.passTarget());
      else a.movImm(R0, this.v.pass).exit();
    }
    a.label(next);
    this.rule = undefined;
  }

  /** Looks the state map value up once per packet; fp-8 holds it afterwards. `skip`: the rule's end. */
  private ensureState(skip: string): void {
    const a = this.a;
    const have = this.fresh('have_state');
    if (this.cacheMaps) a.ldx(8, R0, FP, SLOT_STATE).jmp('jne', R0, imm(0), have);
    a.st(4, FP, SLOT_KEY, 0).ldMap(R1, STATE_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_KEY)).call(HELPER.map_lookup_elem);
    // The lookup of key 0 in a one-entry array cannot fail; the verifier still wants the test
    // (which skips the rule: the program's end may be beyond a 16-bit jump).
    a.jmp('jeq', R0, imm(0), skip).stx(8, FP, SLOT_STATE, R0);
    if (this.opts.selfSeed) this.seedIfZero(have);
    a.label(have);
  }

  /** After the state lookup (r0 = value): seeds a zero PRNG state (see GenOptions.selfSeed). */
  private seedIfZero(done: string): void {
    const a = this.a;
    const store = this.fresh('seed_store');
    a.ldx(8, R1, R0, STATE_PRNG).jmp('jne', R1, imm(0), done);
    a.call(HELPER.get_smp_processor_id).alu64('lsh', R0, imm(32));
    a.ldMapValue(R1, SEED_SECTION, 0).ldx(8, R1, R1, 0).alu64('add', R1, R0);
    a.ldImm64(R2, 0x9e3779b97f4a7c15n).alu64('add', R1, R2);
    a.mov64(R2, R1).alu64('rsh', R2, imm(30)).alu64('xor', R1, R2).ldImm64(R2, 0xbf58476d1ce4e5b9n).alu64('mul', R1, R2);
    a.mov64(R2, R1).alu64('rsh', R2, imm(27)).alu64('xor', R1, R2).ldImm64(R2, 0x94d049bb133111ebn).alu64('mul', R1, R2);
    a.mov64(R2, R1).alu64('rsh', R2, imm(31)).alu64('xor', R1, R2);
    a.jmp('jne', R1, imm(0), store).ldImm64(R1, 0x9e3779b97f4a7c15n);
    a.label(store).ldx(8, R0, FP, SLOT_STATE).stx(8, R0, STATE_PRNG, R1);
  }

  /** Adds 1 to a rule's counter; `stateInR0`: r0 already holds the state value (right after ensureState). */
  private bumpCounter(rule: number, which: 'matched' | 'acted' | 'dropped', stateInR0 = false): void {
    const off = ruleCounterOffset(rule, which);
    if (!stateInR0) this.a.ldx(8, R0, FP, SLOT_STATE);
    this.a.ldx(8, R1, R0, off).alu64('add', R1, imm(1)).stx(8, R0, off, R1);
  }

  /** Counts GSO super-packets at tc egress, so `run` can say that PSH-like rules see them. */
  private countGso(): void {
    const skip = this.fresh('nogso');
    this.a.ldx(4, R1, CTXR, SKB.gsoSegs).jmp('jle', R1, imm(1), skip);
    this.a.ldx(8, R0, FP, SLOT_STATE).ldx(8, R1, R0, STATE_GSO).alu64('add', R1, imm(1)).stx(8, R0, STATE_GSO, R1);
    this.a.label(skip);
  }

  /**
   * Whether this matching packet is one the rule acts on: the counts of `after`, `every` and
   * `first` (shared by all CPUs, or per connection), then the probability draw. With n the
   * packet's number among the matching ones (from 1) and m = n - after: act when m ≥ 1,
   * every divides m, and m / every ≤ first.
   */
  private trigger(rule: Rule, index: number, skip: string): void {
    const a = this.a;
    if (rule.limit || rule.forNs !== undefined || rule.startAfterNs !== undefined) this.clock(rule, index, skip);
    const every = rule.every !== undefined && rule.every > 1 ? rule.every : undefined;
    if (every !== undefined || rule.after !== undefined || rule.first !== undefined) {
      let off = 0;
      if (rule.perConnection) {
        off = this.connCounter(index, skip);
      } else {
        this.usesEvery = true;
        const have = this.fresh('have_every');
        if (this.cacheMaps) a.ldx(8, R0, FP, SLOT_EVERY).jmp('jne', R0, imm(0), have);
        a.st(4, FP, SLOT_KEY, 0).ldMap(R1, EVERY_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_KEY)).call(HELPER.map_lookup_elem);
        a.jmp('jeq', R0, imm(0), skip).stx(8, FP, SLOT_EVERY, R0);
        a.label(have);
        off = 8 * index;
      }
      // n = atomic_fetch_add(counter, 1) + 1
      a.movImm(R1, 1).atomic(8, R0, off, R1, BPF_ADD | BPF_FETCH).alu64('add', R1, imm(1));
      if (rule.after !== undefined && rule.after > 0) a.jmp('jle', R1, imm(rule.after), skip).alu64('sub', R1, imm(rule.after));
      if (every !== undefined) {
        a.mov64(R2, R1).alu64('mod', R2, imm(every)).jmp('jne', R2, imm(0), skip);
        if (rule.first !== undefined) a.alu64('div', R1, imm(every));
      }
      if (rule.first !== undefined) a.jmp('jgt', R1, imm(rule.first), skip);
    }
    // A probability that rounds to 2^32 in 32-bit draws always acts: no draw (and no 32-bit
    // immediate, where 2^32 would wrap to 0 and never act).
    const t = rule.probability === undefined ? 0x100000000 : probabilityThreshold(rule.probability);
    if (t < 0x100000000) {
      const r = this.alloc();
      this.draw(r);
      a.jmp32('jge', r, imm(t | 0), skip);
      this.release(r);
    }
    if (rule.limit) this.rateLimit(rule.limit, index, skip);
  }

  /**
   * The rule's clock (rules with limit, for or start-after): the time map's value looked up
   * into fp-72 and bpf_ktime_get_ns into fp-80 (the cut slots, free until the actions). With
   * a time window, the rule's start is stamped by its first matching packet (atomically: the
   * first CPU wins), and packets outside [start-after, start-after + for) skip the rule.
   */
  private clock(rule: Rule, index: number, skip: string): void {
    const a = this.a;
    this.usesTime = true;
    a.st(4, FP, SLOT_KEY, 0).ldMap(R1, TIME_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_KEY)).call(HELPER.map_lookup_elem);
    a.jmp('jeq', R0, imm(0), skip).stx(8, FP, SLOT_TIME_PTR, R0);
    // Stamps and deadlines are now + 1, so that a clock reading 0 (the VM's default) is a time too.
    a.call(HELPER.ktime_get_ns).alu64('add', R0, imm(1)).stx(8, FP, SLOT_NOW, R0);
    if (rule.forNs === undefined && rule.startAfterNs === undefined) return;
    const off = timeStartOffset(index);
    const have = this.fresh('have_start');
    a.ldx(8, R1, FP, SLOT_TIME_PTR).ldx(8, R2, R1, off).jmp('jne', R2, imm(0), have);
    a.ldx(8, R3, FP, SLOT_NOW).movImm(R0, 0).atomic(8, R1, off, R3, BPF_CMPXCHG);
    a.mov64(R2, R3).jmp('jeq', R0, imm(0), have).mov64(R2, R0);
    a.label(have).ldx(8, R4, FP, SLOT_NOW).alu64('sub', R4, R2); // elapsed since the start
    const startAfter = rule.startAfterNs ?? 0;
    if (startAfter > 0) {
      a.ldImm64(R5, BigInt(startAfter)).jmp('jlt', R4, R5, skip);
    }
    if (rule.forNs !== undefined) a.ldImm64(R5, BigInt(startAfter + rule.forNs)).jmp('jge', R4, R5, skip);
  }

  /**
   * `limit`: at most `packets` per `intervalNs`, as a GCRA (the token bucket as one number,
   * the theoretical arrival time TAT, shared by all CPUs): with T = intervalNs / packets, a
   * packet acts when TAT ≤ now + T, and then TAT = max(TAT, now) + T. So under load the rule
   * acts once per T on average, with bursts of at most two. The update is one compare-and-
   * exchange; a CPU that loses the race to another skips the packet.
   */
  private rateLimit(limit: NonNullable<Rule['limit']>, index: number, skip: string): void {
    const a = this.a;
    const off = timeTatOffset(index);
    const period = Math.max(1, Math.round(limit.intervalNs / limit.packets));
    const ahead = this.fresh('tat_ahead');
    a.ldx(8, R1, FP, SLOT_TIME_PTR).ldx(8, R3, FP, SLOT_NOW).ldx(8, R0, R1, off);
    a.mov64(R2, R0).jmp('jge', R2, R3, ahead).mov64(R2, R3).label(ahead);
    a.ldImm64(R5, BigInt(period));
    a.mov64(R4, R2).alu64('sub', R4, R3).jmp('jgt', R4, R5, skip);
    a.alu64('add', R2, R5).mov64(R4, R0).atomic(8, R1, off, R2, BPF_CMPXCHG).jmp('jne', R0, R4, skip);
  }

  /**
   * r0 = pointer to this packet's connection entry in CONN_MAP (one u64 per per-connection
   * rule), the entry created (zero) for a new connection; returns the offset of this rule's
   * count in it. Jumps to `skip` if it cannot be had (the map full of entries being inserted
   * at once on other CPUs: the packet is not counted).
   */
  private connCounter(index: number, skip: string): number {
    if (!this.connRules.includes(index)) this.connRules.push(index);
    this.connKey();
    this.connEntry(CONN_MAP, skip, CONN_ZERO_MAP);
    return connCountOffset(this.connRules.indexOf(index));
  }

  /**
   * r0 = pointer to the value of the connection key at fp-480 in hash map `map`, the entry
   * created (zero) when new. Jumps to `skip` if it cannot be had (the map full, or full of
   * entries being inserted at once on other CPUs). The zero value to insert is a u64 on the
   * stack, or with `zeroMap` that array map's one value (one u64 per rule of CONN_MAP is more
   * than the stack has room for).
   */
  private connEntry(map: string, skip: string, zeroMap?: string): void {
    const a = this.a;
    const have = this.fresh('have_conn');
    const lookup = (): void => {
      a.ldMap(R1, map).mov64(R2, FP).alu64('add', R2, imm(SLOT_CONN_KEY)).call(HELPER.map_lookup_elem);
    };
    lookup();
    a.jmp('jne', R0, imm(0), have);
    // A new connection: insert a zero value unless another CPU just did, then look it up again.
    if (zeroMap) {
      a.st(4, FP, SLOT_KEY, 0).ldMap(R1, zeroMap).mov64(R2, FP).alu64('add', R2, imm(SLOT_KEY)).call(HELPER.map_lookup_elem);
      a.jmp('jeq', R0, imm(0), skip).mov64(R3, R0).ldMap(R1, map).mov64(R2, FP).alu64('add', R2, imm(SLOT_CONN_KEY));
    } else {
      a.st(8, FP, SLOT_CONN_VALUE, 0).ldMap(R1, map).mov64(R2, FP).alu64('add', R2, imm(SLOT_CONN_KEY));
      a.mov64(R3, FP).alu64('add', R3, imm(SLOT_CONN_VALUE));
    }
    a.movImm(R4, BPF_NOEXIST).call(HELPER.map_update_elem);
    lookup();
    a.jmp('jeq', R0, imm(0), skip);
    a.label(have);
  }

  /**
   * The connection key at fp-480 (layout.ts CONN_KEY): the two endpoints (address, port) in
   * a fixed order, so both directions give the same key; ICMP echo requests and replies use
   * the echo identifier as both ports; packets without IP share one all-zero key. Clobbers
   * r0-r5.
   */
  private connKey(): void {
    const a = this.a;
    const K = SLOT_CONN_KEY;
    for (let off = 0; off < CONN_KEY_SIZE; off += 8) a.st(8, FP, K + off, 0);
    const ports = this.fresh('ck_ports'), tcp = this.fresh('ck_tcp'), udp = this.fresh('ck_udp');
    const icmp = this.fresh('ck_icmp'), icmp6 = this.fresh('ck_icmp6'), echo = this.fresh('ck_echo'), portsDone = this.fresh('ck_ports_done');
    // r4, r5: the source and destination "ports" (raw), r0: the protocol.
    a.movImm(R4, 0).movImm(R5, 0).movImm(R0, 0);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp), tcp).jmp('jset', LAYERS, imm(LAYER_BIT.udp), udp);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.icmp), icmp).jmp('jset', LAYERS, imm(LAYER_BIT.icmpv6), icmp6).ja(portsDone);
    a.label(tcp).movImm(R0, IP_PROTO.tcp).ja(ports);
    a.label(udp).movImm(R0, IP_PROTO.udp);
    a.label(ports).ldx(2, R4, L4, 0).ldx(2, R5, L4, 2).ja(portsDone);
    a.label(icmp).movImm(R0, IP_PROTO.icmp).ldx(1, R1, L4, 0).jmp('jeq', R1, imm(8), echo).jmp('jeq', R1, imm(0), echo).ja(portsDone);
    a.label(icmp6).movImm(R0, IP_PROTO.icmpv6).ldx(1, R1, L4, 0).jmp('jeq', R1, imm(128), echo).jmp('jeq', R1, imm(129), echo).ja(portsDone);
    a.label(echo).ldx(2, R4, L4, 4).mov64(R5, R4);
    a.label(portsDone).stx(1, FP, K + CONN_KEY.proto, R0);
    const v4 = this.fresh('ck_v4'), v6 = this.fresh('ck_v6'), done = this.fresh('ck_done');
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4).jmp('jset', LAYERS, imm(LAYER_BIT.ipv6), v6).ja(done);
    const write = (addrWords: number, srcOff: number, dstOff: number, swap: boolean, end: string): void => {
      for (let i = 0; i < addrWords; i++) {
        a.ldx(4, R1, L3, (swap ? dstOff : srcOff) + 4 * i).stx(4, FP, K + CONN_KEY.addrA + 4 * i, R1);
        a.ldx(4, R1, L3, (swap ? srcOff : dstOff) + 4 * i).stx(4, FP, K + CONN_KEY.addrB + 4 * i, R1);
      }
      a.stx(2, FP, K + CONN_KEY.portA, swap ? R5 : R4).stx(2, FP, K + CONN_KEY.portB, swap ? R4 : R5).ja(end);
    };
    // IPv4: order by (address, port) as one 48-bit number of raw words: any fixed order will do.
    const v4swap = this.fresh('ck_v4_swap');
    a.label(v4).st(1, FP, K + CONN_KEY.family, 4);
    a.ldx(4, R1, L3, 12).alu64('lsh', R1, imm(16)).alu64('or', R1, R4);
    a.ldx(4, R2, L3, 16).alu64('lsh', R2, imm(16)).alu64('or', R2, R5);
    a.jmp('jgt', R1, R2, v4swap);
    write(1, 12, 16, false, done);
    a.label(v4swap);
    write(1, 12, 16, true, done);
    // IPv6: the addresses word by word, then the ports.
    const v6swap = this.fresh('ck_v6_swap'), v6keep = this.fresh('ck_v6_keep');
    a.label(v6).st(1, FP, K + CONN_KEY.family, 6);
    for (let i = 0; i < 4; i++) {
      a.ldx(4, R1, L3, 8 + 4 * i).ldx(4, R2, L3, 24 + 4 * i).jmp('jgt', R1, R2, v6swap).jmp('jlt', R1, R2, v6keep);
    }
    a.jmp('jgt', R4, R5, v6swap);
    a.label(v6keep);
    write(4, 8, 24, false, done);
    a.label(v6swap);
    write(4, 8, 24, true, done);
    a.label(done);
  }

  /** dst = next 32-bit draw of the PRNG in the state map (xorshift64, upper half). */
  private draw(dst: Reg): void {
    const a = this.a;
    const p = this.alloc();
    const t = this.alloc();
    a.ldx(8, p, FP, SLOT_STATE).ldx(8, dst, p, STATE_PRNG);
    a.mov64(t, dst).alu64('lsh', t, imm(13)).alu64('xor', dst, t);
    a.mov64(t, dst).alu64('rsh', t, imm(7)).alu64('xor', dst, t);
    a.mov64(t, dst).alu64('lsh', t, imm(17)).alu64('xor', dst, t);
    a.stx(8, p, STATE_PRNG, dst).alu64('rsh', dst, imm(32));
    this.release(p, t);
  }

  // ---------------------------------------------------------------- faults

  /** Saves the L3 and L4 offsets from the packet start before a helper that may move packet data. */
  private saveHeaderOffsets(): void {
    const a = this.a;
    a.ldx(4, R1, CTXR, CTX[this.kind].data);
    a.mov64(R2, L3).alu64('sub', R2, R1).stx(2, FP, SLOT_L3_OFF, R2);
    a.mov64(R2, L4).alu64('sub', R2, R1).stx(2, FP, SLOT_L4_OFF, R2);
  }

  /**
   * After a helper that may move packet data: r7 and r8 derived again (as reloadHeaders does)
   * for whichever of them the layers present make valid. Offsets saved by saveHeaderOffsets.
   */
  private reloadPresentHeaders(): void {
    const done = this.fresh('reload_done');
    const l3only = this.fresh('reload_l3_only');
    const a = this.a;
    a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp | LAYER_BIT.udp | LAYER_BIT.icmp | LAYER_BIT.icmpv6), l3only + '_l4');
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip | LAYER_BIT.ipv6), l3only).ja(done);
    a.label(l3only);
    this.loadBounds(R2, R3);
    const v4 = this.fresh('reload3_v4'), check = this.fresh('reload3_check'), fail = this.fresh('reload3_fail');
    a.ldx(2, R1, FP, SLOT_L3_OFF).alu64('and', R1, imm(0x3fff)).mov64(L3, R2).alu64('add', L3, R1);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4).mov64(R1, L3).alu64('add', R1, imm(40)).ja(check);
    a.label(v4).mov64(R1, L3).alu64('add', R1, imm(20));
    a.label(check).jmp('jle', R1, R3, done);
    a.label(fail).movImm(R0, this.v.none).exit();
    a.label(l3only + '_l4');
    this.reloadHeaders();
    a.label(done);
  }

  /**
   * `duplicate N` (tc): N copies of the packet as it is now, each sent back to the hook it
   * came from (bpf_clone_redirect to skb->ifindex, BPF_F_INGRESS at ingress), marked with
   * DUPLICATE_TC_INDEX so that this program lets them pass; the original goes on.
   */
  private duplicate(count: number): void {
    const a = this.a;
    // Only the headers present: with no L4 layer (or no IP) r8 (r7) was never set, and the
    // verifier refuses to read it.
    this.savePresentHeaderOffsets();
    a.ldx(4, R1, CTXR, SKB.tcIndex).stx(8, FP, SLOT_OLD, R1);
    a.movImm(R1, DUPLICATE_TC_INDEX).stx(4, CTXR, SKB.tcIndex, R1);
    for (let i = 0; i < count; i++) {
      a.mov64(R1, CTXR).ldx(4, R2, CTXR, SKB.ifindex).movImm(R3, this.hook === 'ingress' ? BPF_F_INGRESS : 0).call(HELPER.clone_redirect);
    }
    a.ldx(8, R1, FP, SLOT_OLD).stx(4, CTXR, SKB.tcIndex, R1);
    this.reloadPresentHeaders();
  }

  /**
   * `corrupt BITS`: flips BITS bits, each at a position drawn from the generator, in the L4
   * payload (after the TCP/UDP/ICMP/ICMPv6 header, up to the end of the IP datagram or of
   * the frame, whichever comes first); nothing when there is no payload. With `fix`, the L4
   * checksum follows each flip (for UDP, a zero "no checksum" stays zero).
   */
  private corrupt(bits: number, fix: boolean, known: ReadonlySet<Layer>): void {
    const a = this.a;
    const done = this.fresh('corrupt_done');
    const protocols = (L4_LAYERS as readonly L4Layer[]).filter((p) => this.wanted.has(p));
    for (const p of protocols) {
      const here = this.fresh(`corrupt_${p}`);
      const next = this.fresh('corrupt_next');
      if (!known.has(p)) a.jmp('jset', LAYERS, imm(LAYER_BIT[p]), here).ja(next);
      a.label(here);
      // Payload offset and length from the packet start, on the stack (set slots are free now).
      a.ldx(4, R2, CTXR, CTX[this.kind].data);
      a.mov64(R4, L4).alu64('sub', R4, R2); // L4 offset
      if (p === 'tcp') a.ldx(1, R1, L4, 12).alu64('rsh', R1, imm(4)).alu64('lsh', R1, imm(2)).alu64('add', R4, R1);
      else a.alu64('add', R4, imm(8));
      a.stx(8, FP, SLOT_PAYLOAD_OFF, R4);
      // End: the IP datagram's end, or the frame's.
      const v4 = this.fresh('corrupt_v4'), haveEnd = this.fresh('corrupt_end');
      a.mov64(R5, L3).alu64('sub', R5, R2);
      a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4);
      a.ldx(2, R1, L3, 4).be(R1, 16).alu64('add', R1, imm(40)).alu64('add', R5, R1).ja(haveEnd);
      a.label(v4).ldx(2, R1, L3, 2).be(R1, 16).alu64('add', R5, R1);
      a.label(haveEnd);
      a.ldx(4, R3, CTXR, CTX[this.kind].dataEnd).alu64('sub', R3, R2);
      const shorter = this.fresh('corrupt_frame_end');
      a.jmp('jle', R5, R3, shorter).mov64(R5, R3).label(shorter);
      a.alu64('sub', R5, R4).jmp('jsle', R5, imm(0), done).stx(8, FP, SLOT_PAYLOAD_LEN, R5);
      for (let i = 0; i < bits; i++) this.flipBit(p, fix, done);
      a.ja(done);
      a.label(next);
    }
    a.label(done);
  }

  /** One flip of `corrupt` in protocol p's payload (offset and length on the stack). */
  private flipBit(p: L4Layer, fix: boolean, done: string): void {
    const a = this.a;
    const r = this.alloc();
    this.draw(r);
    this.release(r);
    // r = draw % (payload bits); byte = r >> 3, bit = r & 7.
    a.mov64(R5, r === R5 ? R5 : r);
    a.ldx(8, R4, FP, SLOT_PAYLOAD_LEN).alu64('lsh', R4, imm(3)).alu64('mod', R5, R4);
    // Both parts of the offset masked to 14 bits, so the verifier sees it within a packet's 64 KB.
    a.mov64(R4, R5).alu64('and', R4, imm(7)).alu64('rsh', R5, imm(3)).alu64('and', R5, imm(0x3fff));
    a.movImm(R3, 1).alu64('lsh', R3, R4); // the bit's mask
    a.ldx(8, R4, FP, SLOT_PAYLOAD_OFF).alu64('and', R4, imm(0x3fff)).alu64('add', R4, R5);
    this.loadBounds(R1, R2);
    a.alu64('add', R1, R4).mov64(R0, R1).alu64('add', R0, imm(1)).jmp('jgt', R0, R2, done);
    a.ldx(1, R0, R1, 0).mov64(R2, R0).alu64('xor', R2, R3).stx(1, R1, 0, R2);
    if (!fix) return;
    // The changed byte as a raw 16-bit checksum word with a zero partner: payloads start at an
    // even offset from the L4 header, so an even payload byte is the word's first byte.
    const even = this.fresh('flip_even');
    a.mov64(R1, R5).alu64('and', R1, imm(1)).jmp('jeq', R1, imm(0), even);
    a.alu64('lsh', R0, imm(8)).alu64('lsh', R2, imm(8));
    a.label(even).stx(8, FP, SLOT_OLD, R0).stx(8, FP, SLOT_NEW, R2);
    const udp = p === 'udp';
    if (this.kind === 'xdp') {
      this.inlineCsumUpdate(L4, L4_CSUM[p], SLOT_OLD, SLOT_NEW, 2, udp);
    } else {
      this.saveHeaderOffsets();
      a.ldx(2, R2, FP, SLOT_L4_OFF).alu64('add', R2, imm(L4_CSUM[p]));
      a.mov64(R1, CTXR).ldx(8, R3, FP, SLOT_OLD).ldx(8, R4, FP, SLOT_NEW).movImm(R5, 2 | (udp ? BPF_F_MARK_MANGLED_0 : 0));
      a.call(HELPER.l4_csum_replace);
      this.reloadHeaders();
    }
  }

  /**
   * `truncate LEN`: frames longer than LEN bytes are cut to LEN (XDP: bpf_xdp_adjust_tail,
   * tc: bpf_skb_change_tail). With `fixLengths`, the IPv4 total length / IPv6 payload length
   * and the UDP length shrink to what is left (when the cut leaves their header whole), and
   * with `fixChecksums` the IPv4 header checksum and the L4 checksum follow: the length
   * changes (the pseudo-header's too) and the bytes cut from the L4 payload, summed before the
   * cut (at most TRUNCATE_CHUNKS * TRUNCATE_CHUNK bytes, 16 KB; beyond, the L4 checksum is left as it was). Layers
   * whose fixed header the cut removed are absent afterwards.
   */
  private truncate(length: number, fixLengths: boolean, fixChecksums: boolean): void {
    const a = this.a;
    const done = this.fresh('truncate_done');
    if (this.kind === 'xdp') a.mov64(R1, CTXR).call(HELPER.xdp_get_buff_len);
    else a.ldx(4, R0, CTXR, SKB.len);
    a.jmp('jle', R0, imm(length), done).stx(8, FP, SLOT_CUT_FRAME_LEN, R0);
    this.savePresentHeaderOffsets();
    if (fixLengths && fixChecksums) this.cutPayloadSum(length);
    a.mov64(R1, CTXR);
    if (this.kind === 'xdp') {
      a.movImm(R2, length).ldx(8, R3, FP, SLOT_CUT_FRAME_LEN).alu64('sub', R2, R3).call(HELPER.xdp_adjust_tail);
      // frame.len of later rules: the new length.
      const failed = this.fresh('cut_failed');
      a.jmp('jne', R0, imm(0), failed).st(8, FP, SLOT_FLEN, length).label(failed);
    } else {
      a.movImm(R2, length).movImm(R3, 0).call(HELPER.skb_change_tail);
    }
    a.stx(8, FP, SLOT_CUT_RESULT, R0);
    this.reloadAfterCut();
    if (!fixLengths) {
      a.label(done);
      return;
    }
    a.ldx(8, R0, FP, SLOT_CUT_RESULT).jmp('jne', R0, imm(0), done);
    const none: ReadonlySet<Layer> = new Set();
    // New length = LEN - header offset, when shorter than the old one.
    const shrink = (layer: 'ip' | 'ipv6' | 'udp', fieldName: string, offSlot: number, fieldOff: number, extra: number): void => {
      const skip = this.fresh(`cut_${layer}_kept`);
      this.layerTest(layer, skip, none);
      const base = layer === 'udp' ? L4 : L3;
      a.ldx(2, R1, FP, offSlot).movImm(R2, length - extra).alu64('sub', R2, R1);
      a.ldx(2, R3, base, fieldOff).be(R3, 16).jmp('jge', R2, R3, skip).stx(8, FP, SLOT_CUT_VALUE, R2);
      const f = this.field(fieldName);
      this.writeSet({ kind: 'set', field: f, value: { kind: 'num', value: 0 }, span: { start: 0, end: 0 } } as Extract<Action, { kind: 'set' }>, SLOT_CUT_VALUE, fixChecksums, new Set([layer]));
      a.label(skip);
    };
    shrink('ip', 'ip.len', SLOT_L3_OFF, 2, 0);
    shrink('ipv6', 'ipv6.plen', SLOT_L3_OFF, 4, 40);
    shrink('udp', 'udp.length', SLOT_L4_OFF, 4, 0);
    if (fixChecksums) {
      // The payload bytes cut off leave the L4 checksum: old word = their sum, new word = 0.
      for (const p of L4_LAYERS) {
        if (!this.wanted.has(p)) continue;
        const skip = this.fresh(`cut_${p}_sum`);
        this.layerTest(p, skip, none);
        a.ldx(8, R1, FP, SLOT_CUT_SUM).jmp('jeq', R1, imm(0), skip).stx(8, FP, SLOT_OLD, R1).st(8, FP, SLOT_NEW, 0);
        this.fixL4(false, this.field(L4_ANY_FIELD[p]), SLOT_OLD, SLOT_NEW, 2, new Set([p]));
        a.label(skip);
      }
    }
    a.label(done);
  }

  /**
   * Before a cut to `length` bytes: the ones' complement sum (raw words, folded to 16 bits)
   * of the L4 payload bytes beyond `length`, up to the end of the IP datagram or of the
   * frame's linear data, into SLOT_CUT_SUM (0 when nothing is cut from it). L4 headers start
   * at an even offset, so a byte's place in its checksum word is its offset's parity.
   */
  private cutPayloadSum(length: number): void {
    const a = this.a;
    const done = this.fresh('cutsum_done');
    const have = this.fresh('cutsum_l4');
    a.st(8, FP, SLOT_CUT_SUM, 0);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp | LAYER_BIT.udp | LAYER_BIT.icmp | LAYER_BIT.icmpv6), have).ja(done);
    a.label(have);
    // r5 = the datagram's end (offset from the packet start), at most the linear data's end.
    const v4 = this.fresh('cutsum_v4'), haveEnd = this.fresh('cutsum_end'), inFrame = this.fresh('cutsum_in_frame');
    a.ldx(4, R2, CTXR, CTX[this.kind].data);
    a.mov64(R5, L3).alu64('sub', R5, R2);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4);
    a.ldx(2, R1, L3, 4).be(R1, 16).alu64('add', R1, imm(40)).alu64('add', R5, R1).ja(haveEnd);
    a.label(v4).ldx(2, R1, L3, 2).be(R1, 16).alu64('add', R5, R1);
    a.label(haveEnd).ldx(4, R3, CTXR, CTX[this.kind].dataEnd).alu64('sub', R3, R2);
    a.jmp('jle', R5, R3, inFrame).mov64(R5, R3).label(inFrame);
    a.alu64('and', R5, imm(0xffff)).movImm(R0, 0).movImm(R4, length);
    a.jmp('jge', R4, R5, done);
    const chunks = this.fresh('cutsum_chunks'), tail = this.fresh('cutsum_tail'), fold = this.fresh('cutsum_fold');
    if (length % 2 === 1) {
      // The first byte cut is the second of its word.
      this.loadBounds(R1, R2);
      a.alu64('add', R1, imm(length + 1)).jmp('jgt', R1, R2, fold);
      a.ldx(1, R0, R1, -1).alu64('lsh', R0, imm(8)).alu64('add', R4, imm(1));
    }
    // Chunks of TRUNCATE_CHUNK bytes copied to the stack (bpf_skb_load_bytes /
    // bpf_xdp_load_bytes: packet offsets, not pointers, so the verifier follows one state per
    // chunk) and summed by bpf_csum_diff; the state lives on the stack (helpers clobber r1-r5);
    // then the last partial chunk, zero-padded. Chunks start at even offsets.
    const load = this.kind === 'xdp' ? HELPER.xdp_load_bytes : HELPER.skb_load_bytes;
    a.stx(8, FP, SLOT_CUT_SUM, R0).stx(8, FP, SLOT_CUT_POS, R4).stx(8, FP, SLOT_CUT_END, R5).st(8, FP, SLOT_CUT_COUNT, 0);
    a.label(chunks).ldx(8, R3, FP, SLOT_CUT_COUNT).jmp('jge', R3, imm(TRUNCATE_CHUNKS), fold);
    a.ldx(8, R2, FP, SLOT_CUT_POS).ldx(8, R5, FP, SLOT_CUT_END);
    a.mov64(R1, R2).alu64('add', R1, imm(TRUNCATE_CHUNK)).jmp('jgt', R1, R5, tail);
    a.mov64(R1, CTXR).mov64(R3, FP).alu64('add', R3, imm(SLOT_CUT_BUF)).movImm(R4, TRUNCATE_CHUNK).call(load);
    a.jmp('jne', R0, imm(0), fold);
    a.movImm(R1, 0).movImm(R2, 0).mov64(R3, FP).alu64('add', R3, imm(SLOT_CUT_BUF)).movImm(R4, TRUNCATE_CHUNK).movImm(R5, 0).call(HELPER.csum_diff);
    a.ldx(8, R1, FP, SLOT_CUT_SUM).alu64('add', R1, R0).stx(8, FP, SLOT_CUT_SUM, R1);
    a.ldx(8, R1, FP, SLOT_CUT_POS).alu64('add', R1, imm(TRUNCATE_CHUNK)).stx(8, FP, SLOT_CUT_POS, R1);
    a.ldx(8, R1, FP, SLOT_CUT_COUNT).alu64('add', R1, imm(1)).stx(8, FP, SLOT_CUT_COUNT, R1).ja(chunks);
    // r2 = position, r5 = end: end - position bytes (fewer than a chunk) are left. `jle 0`, not
    // `jeq 0`: both skip an empty tail, but only an unsigned bound tells a verifier before 6.8
    // (Debian 12's 6.1) that the load's size is at least 1 ("invalid zero-sized read").
    a.label(tail).alu64('sub', R5, R2).alu64('and', R5, imm(TRUNCATE_CHUNK - 1)).jmp('jle', R5, imm(0), fold);
    for (let off = 0; off < TRUNCATE_CHUNK; off += 8) a.st(8, FP, SLOT_CUT_BUF + off, 0);
    a.mov64(R4, R5).mov64(R1, CTXR).mov64(R3, FP).alu64('add', R3, imm(SLOT_CUT_BUF)).call(load);
    a.jmp('jne', R0, imm(0), fold);
    a.movImm(R1, 0).movImm(R2, 0).mov64(R3, FP).alu64('add', R3, imm(SLOT_CUT_BUF)).movImm(R4, TRUNCATE_CHUNK).movImm(R5, 0).call(HELPER.csum_diff);
    a.ldx(8, R1, FP, SLOT_CUT_SUM).alu64('add', R1, R0).stx(8, FP, SLOT_CUT_SUM, R1);
    a.label(fold).ldx(8, R0, FP, SLOT_CUT_SUM);
    for (let i = 0; i < 2; i++) a.mov64(R1, R0).alu64('rsh', R1, imm(16)).alu64('and', R0, imm(0xffff)).alu64('add', R0, R1);
    a.stx(8, FP, SLOT_CUT_SUM, R0);
    a.label(done);
  }

  /** saveHeaderOffsets for the headers present only (r7/r8 may never have been set otherwise). */
  private savePresentHeaderOffsets(): void {
    const a = this.a;
    const done = this.fresh('save_done'), l4 = this.fresh('save_l4');
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip | LAYER_BIT.ipv6), l4).ja(done);
    a.label(l4).ldx(4, R1, CTXR, CTX[this.kind].data);
    a.mov64(R2, L3).alu64('sub', R2, R1).stx(2, FP, SLOT_L3_OFF, R2);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp | LAYER_BIT.udp | LAYER_BIT.icmp | LAYER_BIT.icmpv6), l4 + '_yes').ja(done);
    a.label(l4 + '_yes').mov64(R2, L4).alu64('sub', R2, R1).stx(2, FP, SLOT_L4_OFF, R2);
    a.label(done);
  }

  /**
   * After a cut: r7 and r8 derived again from the saved offsets, and the layers whose fixed
   * header no longer lies wholly in the frame marked absent (an L3 header gone takes the L4
   * header with it).
   */
  private reloadAfterCut(): void {
    const a = this.a;
    const L3_BITS = LAYER_BIT.ip | LAYER_BIT.ipv6;
    const L4_BITS = LAYER_BIT.tcp | LAYER_BIT.udp | LAYER_BIT.icmp | LAYER_BIT.icmpv6;
    const done = this.fresh('cut_reload_done'), have3 = this.fresh('cut_l3'), have4 = this.fresh('cut_l4');
    const v4 = this.fresh('cut_v4'), check3 = this.fresh('cut_check3'), tcp = this.fresh('cut_tcp'), check4 = this.fresh('cut_check4');
    const gone3 = this.fresh('cut_l3_gone');
    a.jmp('jset', LAYERS, imm(L3_BITS), have3).ja(done);
    a.label(have3);
    this.loadBounds(R2, R3);
    a.ldx(2, R1, FP, SLOT_L3_OFF).alu64('and', R1, imm(0x3fff)).mov64(L3, R2).alu64('add', L3, R1);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4).mov64(R1, L3).alu64('add', R1, imm(40)).ja(check3);
    a.label(v4).mov64(R1, L3).alu64('add', R1, imm(20));
    a.label(check3).jmp('jgt', R1, R3, gone3);
    a.jmp('jset', LAYERS, imm(L4_BITS), have4).ja(done);
    a.label(have4);
    a.ldx(2, R1, FP, SLOT_L4_OFF).alu64('and', R1, imm(0x3fff)).mov64(L4, R2).alu64('add', L4, R1);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.tcp), tcp).mov64(R1, L4).alu64('add', R1, imm(8)).ja(check4);
    a.label(tcp).mov64(R1, L4).alu64('add', R1, imm(20));
    a.label(check4).jmp('jle', R1, R3, done);
    a.alu64('and', LAYERS, imm(~L4_BITS)).ja(done);
    a.label(gone3).alu64('and', LAYERS, imm(~(L3_BITS | L4_BITS)));
    a.label(done);
  }

  /**
   * `reject` of a TCP segment: the packet becomes the TCP RST that answers it (RFC 9293 3.10.7:
   * to a segment with ACK, seq = its ack; otherwise seq 0 and ack = its seq + length + SYN +
   * FIN, with ACK set), from the addresses and ports it was sent to, headers built afresh
   * (IPv4 without options, TTL / hop limit 64, checksums computed whole), the frame cut to
   * them; then sent back: XDP_TX at xdp, bpf_redirect to the device's egress at tc ingress and
   * to its ingress at tc egress (back to the local sender). A GSO super-packet at tc egress
   * is only dropped. Ends the program.
   */
  private rejectTcp(): void {
    const a = this.a;
    const drop = this.fresh('reject_drop');
    if (this.hook === 'egress') a.ldx(4, R1, CTXR, SKB.gsoSegs).jmp('jgt', R1, imm(1), drop);
    // What the answer needs, on the stack (set slots: a rule with reject has no sets).
    a.ldx(4, R1, L4, 0).stx(8, FP, REJ_PORTS, R1);
    a.ldx(4, R1, L4, 4).be(R1, 32).stx(8, FP, REJ_SEQ, R1);
    a.ldx(4, R1, L4, 8).be(R1, 32).stx(8, FP, REJ_ACK, R1);
    a.ldx(1, R1, L4, 13).stx(8, FP, REJ_FLAGS, R1);
    a.ldx(4, R2, CTXR, CTX[this.kind].data);
    a.mov64(R5, L3).alu64('sub', R5, R2);
    a.mov64(R1, L3).alu64('sub', R1, R2).stx(8, FP, REJ_L3OFF, R1);
    const v4 = this.fresh('reject_read_v4'), haveEnd = this.fresh('reject_end');
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4);
    a.ldx(2, R1, L3, 4).be(R1, 16).alu64('add', R1, imm(40)).alu64('add', R5, R1);
    for (let i = 0; i < 4; i++) {
      a.ldx(4, R1, L3, 8 + 4 * i).stx(4, FP, REJ_SADDR + 4 * i, R1);
      a.ldx(4, R1, L3, 24 + 4 * i).stx(4, FP, REJ_DADDR + 4 * i, R1);
    }
    a.ja(haveEnd);
    a.label(v4).ldx(2, R1, L3, 2).be(R1, 16).alu64('add', R5, R1);
    a.ldx(4, R1, L3, 12).stx(4, FP, REJ_SADDR, R1).ldx(4, R1, L3, 16).stx(4, FP, REJ_DADDR, R1);
    a.label(haveEnd);
    // r5 = the segment's length: datagram end - L4 offset - TCP header length, + SYN + FIN.
    a.mov64(R1, L4).alu64('sub', R1, R2).alu64('sub', R5, R1);
    a.ldx(1, R1, L4, 12).alu64('rsh', R1, imm(4)).alu64('lsh', R1, imm(2)).alu64('sub', R5, R1);
    a.ldx(8, R1, FP, REJ_FLAGS);
    a.mov64(R3, R1).alu64('and', R3, imm(1)).alu64('add', R5, R3);
    a.mov64(R3, R1).alu64('rsh', R3, imm(1)).alu64('and', R3, imm(1)).alu64('add', R5, R3);
    const hadAck = this.fresh('reject_had_ack'), answer = this.fresh('reject_answer');
    a.jmp('jset', R1, imm(0x10), hadAck);
    a.ldx(8, R3, FP, REJ_SEQ).alu64('add', R3, R5).stx(8, FP, REJ_ACK, R3).st(8, FP, REJ_SEQ, 0).st(8, FP, REJ_FLAGS, 0x14).ja(answer);
    a.label(hadAck).ldx(8, R3, FP, REJ_ACK).stx(8, FP, REJ_SEQ, R3).st(8, FP, REJ_ACK, 0).st(8, FP, REJ_FLAGS, 0x04);
    a.label(answer);
    // Ethernet: back where it came from.
    this.loadBounds(R1, R2);
    a.mov64(R3, R1).alu64('add', R3, imm(12)).jmp('jgt', R3, R2, drop);
    a.ldx(4, R3, R1, 0).ldx(2, R4, R1, 4).ldx(4, R5, R1, 6).ldx(2, R0, R1, 10);
    a.stx(4, R1, 0, R5).stx(2, R1, 4, R0).stx(4, R1, 6, R3).stx(2, R1, 10, R4);
    const v4w = this.fresh('reject_v4'), cut = this.fresh('reject_cut');
    a.jmp('jset', LAYERS, imm(LAYER_BIT.ip), v4w);
    this.writeRst(true, drop);
    a.ja(cut);
    a.label(v4w);
    this.writeRst(false, drop);
    a.label(cut);
    // Cut the frame to the new headers (REJ_NEWLEN) and send it back.
    this.sendBack();
    a.label(drop).movImm(R0, this.v.drop).exit();
  }

  /**
   * `reject` with an ICMP destination unreachable (IPv4): 28 bytes grown in front of the frame
   * (XDP: bpf_xdp_adjust_head; tc: bpf_skb_change_head), the link-layer header moved there
   * with its addresses swapped, then a fresh IPv4 header (to the sender, from the address it
   * sent to) and ICMP type 3 with `code`, quoting the original IP header and the first 8 bytes
   * after it (RFC 792), the frame cut after the quote; sent back as rejectTcp does. No answer
   * (only the drop) to ICMP other than echo, to non-first fragments, and to multicast or
   * broadcast destinations (RFC 1122 3.2.2).
   */
  private rejectIcmp4(code: number): void {
    const a = this.a;
    const drop = this.fresh('icmp_drop');
    const ok = this.fresh('icmp_may');
    if (this.hook === 'egress') a.ldx(4, R1, CTXR, SKB.gsoSegs).jmp('jgt', R1, imm(1), drop);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.icmp), ok + '_icmp').ja(ok);
    a.label(ok + '_icmp').ldx(1, R1, L4, 0).jmp('jeq', R1, imm(8), ok).jmp('jne', R1, imm(0), drop);
    a.label(ok);
    a.ldx(2, R1, L3, 6).alu64('and', R1, imm(RAW_IP_OFFSET_MASK)).jmp('jne', R1, imm(0), drop);
    a.ldx(1, R1, L3, 16).jmp('jge', R1, imm(224), drop);
    a.ldx(4, R1, L3, 12).stx(4, FP, REJ_SADDR, R1).ldx(4, R1, L3, 16).stx(4, FP, REJ_DADDR, R1);
    // Offsets: L3 (REJ_L3OFF), the quote's length (REJ_QUOTE): IP header + 8, within the frame, even.
    a.ldx(4, R2, CTXR, CTX[this.kind].data).ldx(4, R3, CTXR, CTX[this.kind].dataEnd);
    a.mov64(R1, L3).alu64('sub', R1, R2).stx(8, FP, REJ_L3OFF, R1);
    a.mov64(R4, R3).alu64('sub', R4, L3); // bytes from L3 to the end
    a.ldx(1, R5, L3, 0).alu64('and', R5, imm(0x0f)).alu64('lsh', R5, imm(2)).alu64('add', R5, imm(8));
    const fits = this.fresh('quote_fits');
    a.jmp('jle', R5, R4, fits).mov64(R5, R4).label(fits).alu64('and', R5, imm(0x7e)).stx(8, FP, REJ_QUOTE, R5);
    // r1 = the new IP header: data + L3 offset, room for it, the ICMP header and the quote (up to 68).
    this.openReplyRoom(28, drop, ok);
    a.ldx(8, R4, FP, REJ_QUOTE).alu64('add', R4, imm(28)).be(R4, 16).alu64('lsh', R4, imm(16)).alu64('or', R4, imm(0x0045)).stx(4, R1, 0, R4);
    a.st(4, R1, 4, 0x00400000).st(4, R1, 8, 0x00000140);
    a.ldx(4, R3, FP, REJ_DADDR).stx(4, R1, 12, R3).ldx(4, R3, FP, REJ_SADDR).stx(4, R1, 16, R3);
    a.st(4, R1, 20, 3 | (code << 8)).st(4, R1, 24, 0);
    a.movImm(R0, 0);
    for (let off = 0; off < 20; off += 2) a.ldx(2, R3, R1, off).alu64('add', R0, R3);
    const foldInto = (at: number): void => {
      for (let i = 0; i < 2; i++) a.mov64(R3, R0).alu64('rsh', R3, imm(16)).alu64('and', R0, imm(0xffff)).alu64('add', R0, R3);
      a.alu64('xor', R0, imm(0xffff)).stx(2, R1, at, R0);
    };
    foldInto(10);
    // ICMP checksum: its header and the quote, word by word while within the quote and the frame.
    a.movImm(R0, 0).ldx(8, R5, FP, REJ_QUOTE).alu64('add', R5, imm(8));
    const summed = this.fresh('icmp_summed');
    for (let off = 0; off < 8 + 68; off += 2) {
      a.jmp('jle', R5, imm(off), summed);
      a.mov64(R3, R1).alu64('add', R3, imm(20 + off + 2)).jmp('jgt', R3, R2, summed);
      a.ldx(2, R3, R1, 20 + off).alu64('add', R0, R3);
    }
    a.label(summed);
    foldInto(22);
    a.ldx(8, R2, FP, REJ_L3OFF).ldx(8, R3, FP, REJ_QUOTE).alu64('add', R2, R3).alu64('add', R2, imm(28)).stx(8, FP, REJ_NEWLEN, R2);
    this.sendBack();
    a.label(drop).movImm(R0, this.v.drop).exit();
  }

  /**
   * Makes `room` bytes in front of the frame for an ICMP reply's new headers, moves the
   * link-layer header (14 to 22 bytes, its length at REJ_L3OFF) to the new start with the MAC
   * addresses swapped, and leaves r1 = the new L3 header, checked to hold `room` bytes, and
   * r2 = data_end. Jumps to `drop` when the head cannot grow.
   */
  private openReplyRoom(room: number, drop: string, ok: string): void {
    const a = this.a;
    a.mov64(R1, CTXR);
    if (this.kind === 'xdp') a.movImm(R2, -room).call(HELPER.xdp_adjust_head);
    else a.movImm(R2, room).movImm(R3, 0).call(HELPER.skb_change_head);
    a.jmp('jne', R0, imm(0), drop);
    this.loadBounds(R1, R2);
    a.mov64(R3, R1).alu64('add', R3, imm(room + 22)).jmp('jgt', R3, R2, drop);
    a.ldx(8, R5, FP, REJ_L3OFF);
    for (let off = 12; off < 22; off += 2) {
      a.jmp('jle', R5, imm(off), ok + '_moved');
      a.ldx(2, R3, R1, room + off).stx(2, R1, off, R3);
    }
    a.label(ok + '_moved');
    a.ldx(4, R3, R1, room).ldx(2, R4, R1, room + 4).stx(4, R1, 6, R3).stx(2, R1, 10, R4);
    a.ldx(4, R3, R1, room + 6).ldx(2, R4, R1, room + 10).stx(4, R1, 0, R3).stx(2, R1, 4, R4);
    a.alu64('and', R5, imm(0x1f)).alu64('add', R1, R5).mov64(R3, R1).alu64('add', R3, imm(room)).jmp('jgt', R3, R2, drop);
  }

  /**
   * `reject` with an ICMPv6 error (RFC 4443): as rejectIcmp4 with 48 bytes in front: a fresh
   * IPv6 header (hop limit 64) and ICMPv6 type/code (destination unreachable, or parameter
   * problem pointing at the next-header field for proto-unreachable), quoting the original
   * IPv6 header and the 8 bytes after it; checksum with the pseudo-header. No answer to ICMPv6
   * errors or to multicast destinations.
   */
  private rejectIcmp6(answer: { type: number; code: number; pointer: number }): void {
    const a = this.a;
    const drop = this.fresh('icmp6_drop');
    const ok = this.fresh('icmp6_may');
    if (this.hook === 'egress') a.ldx(4, R1, CTXR, SKB.gsoSegs).jmp('jgt', R1, imm(1), drop);
    a.jmp('jset', LAYERS, imm(LAYER_BIT.icmpv6), ok + '_icmp').ja(ok);
    a.label(ok + '_icmp').ldx(1, R1, L4, 0).jmp('jlt', R1, imm(128), drop);
    a.label(ok);
    a.ldx(1, R1, L3, 24).jmp('jeq', R1, imm(0xff), drop);
    for (let i = 0; i < 4; i++) a.ldx(4, R1, L3, 8 + 4 * i).stx(4, FP, REJ_SADDR + 4 * i, R1).ldx(4, R1, L3, 24 + 4 * i).stx(4, FP, REJ_DADDR + 4 * i, R1);
    a.ldx(4, R2, CTXR, CTX[this.kind].data).ldx(4, R3, CTXR, CTX[this.kind].dataEnd);
    a.mov64(R1, L3).alu64('sub', R1, R2).stx(8, FP, REJ_L3OFF, R1);
    a.mov64(R4, R3).alu64('sub', R4, L3).movImm(R5, 48);
    const fits = this.fresh('quote6_fits');
    a.jmp('jle', R5, R4, fits).mov64(R5, R4).label(fits).alu64('and', R5, imm(0x7e)).stx(8, FP, REJ_QUOTE, R5);
    this.openReplyRoom(48, drop, ok);
    // Version 6, payload length = 8 + quote, next header 58, hop limit 64.
    a.st(4, R1, 0, 0x00000060);
    a.ldx(8, R4, FP, REJ_QUOTE).alu64('add', R4, imm(8)).be(R4, 16).alu64('or', R4, imm(0x40 << 24 | 58 << 16)).stx(4, R1, 4, R4);
    for (let i = 0; i < 4; i++) a.ldx(4, R3, FP, REJ_DADDR + 4 * i).stx(4, R1, 8 + 4 * i, R3).ldx(4, R3, FP, REJ_SADDR + 4 * i).stx(4, R1, 24 + 4 * i, R3);
    a.st(4, R1, 40, answer.type | (answer.code << 8)).st(4, R1, 44, 0);
    if (answer.pointer) a.movImm(R3, answer.pointer << 24).stx(4, R1, 44, R3);
    // Checksum: pseudo-header (addresses, length, next header 58) + ICMPv6 header + quote.
    a.movImm(R0, 58 << 8).ldx(8, R5, FP, REJ_QUOTE).alu64('add', R5, imm(8)).mov64(R3, R5).be(R3, 16).alu64('add', R0, R3);
    for (let off = 8; off < 40; off += 2) a.ldx(2, R3, R1, off).alu64('add', R0, R3);
    const summed = this.fresh('icmp6_summed');
    for (let off = 0; off < 8 + 48; off += 2) {
      a.jmp('jle', R5, imm(off), summed);
      a.mov64(R3, R1).alu64('add', R3, imm(40 + off + 2)).jmp('jgt', R3, R2, summed);
      a.ldx(2, R3, R1, 40 + off).alu64('add', R0, R3);
    }
    a.label(summed);
    for (let i = 0; i < 2; i++) a.mov64(R3, R0).alu64('rsh', R3, imm(16)).alu64('and', R0, imm(0xffff)).alu64('add', R0, R3);
    a.alu64('xor', R0, imm(0xffff)).stx(2, R1, 42, R0);
    a.ldx(8, R2, FP, REJ_L3OFF).ldx(8, R3, FP, REJ_QUOTE).alu64('add', R2, R3).alu64('add', R2, imm(48)).stx(8, FP, REJ_NEWLEN, R2);
    this.sendBack();
    a.label(drop).movImm(R0, this.v.drop).exit();
  }

  /** Cuts the frame to REJ_NEWLEN and sends it back the way it came (see rejectTcp). */
  private sendBack(): void {
    const a = this.a;
    const send = this.fresh('reject_send');
    if (this.kind === 'xdp') {
      a.mov64(R1, CTXR).call(HELPER.xdp_get_buff_len);
      a.ldx(8, R2, FP, REJ_NEWLEN).jmp('jge', R2, R0, send).alu64('sub', R2, R0);
      a.mov64(R1, CTXR).call(HELPER.xdp_adjust_tail);
      a.label(send).movImm(R0, XDP_TX).exit();
    } else {
      a.ldx(4, R1, CTXR, SKB.len).ldx(8, R2, FP, REJ_NEWLEN).jmp('jge', R2, R1, send);
      a.mov64(R1, CTXR).movImm(R3, 0).call(HELPER.skb_change_tail);
      a.label(send).ldx(4, R1, CTXR, SKB.ifindex).movImm(R2, this.hook === 'egress' ? BPF_F_INGRESS : 0).call(HELPER.redirect).exit();
    }
  }

  /** The RST's IP and TCP headers at r7 (IPv6 or IPv4), their checksums, and REJ_NEWLEN. */
  private writeRst(ipv6: boolean, fail: string): void {
    const a = this.a;
    const ipLen = ipv6 ? 40 : 20;
    a.mov64(R1, L3).alu64('add', R1, imm(ipLen + 20)).ldx(4, R2, CTXR, CTX[this.kind].dataEnd).jmp('jgt', R1, R2, fail);
    a.ldx(8, R1, FP, REJ_L3OFF).alu64('add', R1, imm(ipLen + 20)).stx(8, FP, REJ_NEWLEN, R1);
    // Raw words as a little-endian load sees them: bytes b0 b1 b2 b3 = b0 | b1 << 8 | ...
    let addrOff: number;
    if (ipv6) {
      a.st(4, L3, 0, 0x00000060).st(4, L3, 4, 0x40061400);
      addrOff = 8;
      for (let i = 0; i < 4; i++) {
        a.ldx(4, R1, FP, REJ_DADDR + 4 * i).stx(4, L3, 8 + 4 * i, R1);
        a.ldx(4, R1, FP, REJ_SADDR + 4 * i).stx(4, L3, 24 + 4 * i, R1);
      }
    } else {
      a.st(4, L3, 0, 0x28000045).st(4, L3, 4, 0x00400000).st(4, L3, 8, 0x00000640);
      addrOff = 12;
      a.ldx(4, R1, FP, REJ_DADDR).stx(4, L3, 12, R1).ldx(4, R1, FP, REJ_SADDR).stx(4, L3, 16, R1);
    }
    const t = ipLen;
    a.ldx(8, R1, FP, REJ_PORTS).mov64(R3, R1).alu64('rsh', R3, imm(16)).alu64('lsh', R1, imm(16)).alu64('or', R1, R3).stx(4, L3, t, R1);
    a.ldx(8, R1, FP, REJ_SEQ).be(R1, 32).stx(4, L3, t + 4, R1);
    a.ldx(8, R1, FP, REJ_ACK).be(R1, 32).stx(4, L3, t + 8, R1);
    a.ldx(8, R1, FP, REJ_FLAGS).alu64('lsh', R1, imm(8)).alu64('or', R1, imm(0x50)).stx(2, L3, t + 12, R1);
    a.st(2, L3, t + 14, 0).st(4, L3, t + 16, 0);
    const fold = (): void => {
      for (let i = 0; i < 2; i++) a.mov64(R1, R0).alu64('rsh', R1, imm(16)).alu64('and', R0, imm(0xffff)).alu64('add', R0, R1);
      a.alu64('xor', R0, imm(0xffff));
    };
    if (!ipv6) {
      a.movImm(R0, 0);
      for (let off = 0; off < 20; off += 2) a.ldx(2, R1, L3, off).alu64('add', R0, R1);
      fold();
      a.stx(2, L3, 10, R0);
    }
    // TCP: pseudo-header (addresses, protocol 6 and length 20 as raw words: 0x0600 + 0x1400), header.
    a.movImm(R0, 0x1a00);
    for (let off = addrOff; off < addrOff + (ipv6 ? 32 : 8); off += 2) a.ldx(2, R1, L3, off).alu64('add', R0, R1);
    for (let off = t; off < t + 20; off += 2) a.ldx(2, R1, L3, off).alu64('add', R0, R1);
    fold();
    a.stx(2, L3, t + 16, R0);
  }

  // ---------------------------------------------------------------- conditions

  /**
   * Falls through when `c` holds, jumps to `no` otherwise. `known`: layers already known to
   * be present here (their presence tests are left out). Returns the layers known present
   * after it, when it held.
   */
  private condFalse(c: Cond, no: string, known: ReadonlySet<Layer>): ReadonlySet<Layer> {
    const a = this.a;
    const after = new Set([...known, ...requiredLayers(c)]);
    switch (c.kind) {
      case 'true':
        return known;
      case 'proto':
        this.layerTest(c.layer, no, known);
        return after;
      case 'truthy': {
        const bits = bitTest(c.expr);
        if (bits) {
          this.bitsTest(bits, no, known, false);
        } else {
          const r = this.expr(c.expr, no, known);
          a.jmp('jeq', r, imm(0), no);
          this.release(r);
        }
        return after;
      }
      case 'cmp':
        this.compare(c.op, c.left, c.right, no, known);
        return after;
      case 'in': {
        const yes = this.fresh('in_yes');
        const v = this.expr(c.expr, no, known);
        for (const item of c.items) {
          const skip = this.fresh('in_next');
          if (item.hi === undefined) {
            this.jumpCmp('jeq', v, item.lo, yes, no, known);
          } else {
            this.jumpCmp('jlt', v, item.lo, skip, no, known);
            this.jumpCmp('jle', v, item.hi, yes, no, known);
          }
          a.label(skip);
        }
        this.release(v);
        a.ja(no).label(yes);
        return after;
      }
      case 'and': {
        const k = this.condFalse(c.left, no, known);
        this.condFalse(c.right, no, k);
        return after;
      }
      case 'or': {
        const tests = orTests(c);
        const yes = this.fresh('or_yes');
        tests.slice(0, -1).forEach((t) => this.testTrue(t, yes, known));
        this.testFalse(tests[tests.length - 1]!, no, known);
        a.label(yes);
        return after;
      }
      case 'not':
        this.condTrue(c.arg, no, known);
        return known;
    }
  }

  /** Jumps to `yes` when `c` holds, falls through otherwise. */
  private condTrue(c: Cond, yes: string, known: ReadonlySet<Layer>): void {
    const a = this.a;
    switch (c.kind) {
      case 'true':
        a.ja(yes);
        return;
      case 'proto':
        if (c.layer === 'frame' || known.has(c.layer)) a.ja(yes);
        else a.jmp('jset', LAYERS, imm(LAYER_BIT[c.layer]), yes);
        return;
      case 'truthy': {
        const bits = bitTest(c.expr);
        if (!bits) break;
        const skip = this.fresh('bits_absent');
        this.bitsTest(bits, yes, known, true, skip);
        a.label(skip);
        return;
      }
      case 'and': {
        const skip = this.fresh('and_no');
        const k = this.condFalse(c.left, skip, known);
        this.condTrue(c.right, yes, k);
        a.label(skip);
        return;
      }
      case 'or':
        for (const t of orTests(c)) this.testTrue(t, yes, known);
        return;
      case 'not':
        this.condFalse(c.arg, yes, known);
        return;
      default:
        break;
    }
    const skip = this.fresh('not_holds');
    this.condFalse(c, skip, known);
    a.ja(yes).label(skip);
  }

  private testTrue(t: OrTest, yes: string, known: ReadonlySet<Layer>): void {
    if (t.kind === 'bits') {
      const skip = this.fresh('bits_absent');
      this.bitsTest(t, yes, known, true, skip);
      this.a.label(skip);
    } else {
      this.condTrue(t, yes, known);
    }
  }

  private testFalse(t: OrTest, no: string, known: ReadonlySet<Layer>): void {
    if (t.kind === 'bits') this.bitsTest(t, no, known, false);
    else this.condFalse(t, no, known);
  }

  /** Presence test of a layer: falls through when present, jumps to `absent` otherwise. */
  private layerTest(layer: Layer, absent: string, known: ReadonlySet<Layer>): void {
    if (layer === 'frame' || known.has(layer)) return;
    const ok = this.fresh(`has_${layer}`);
    this.a.jmp('jset', LAYERS, imm(LAYER_BIT[layer]), ok).ja(absent).label(ok);
  }

  /**
   * Tests bits of a field's container with one load and one jump, on the raw word: when
   * `jumpIfSet`, jumps to `target` if any bit is set (and to `absent` if the layer is
   * missing); otherwise jumps to `target` if no bit is set or the layer is missing.
   */
  private bitsTest(t: BitsTest, target: string, known: ReadonlySet<Layer>, jumpIfSet: boolean, absent = target): void {
    const a = this.a;
    const at = this.access(t.field, absent, known);
    const r = this.alloc();
    a.ldx(t.field.width as 1 | 2 | 4, r, at.base, at.off);
    at.release();
    if (jumpIfSet) {
      a.jmp('jset', r, imm(t.rawMask | 0), target);
    } else {
      if (t.rawMask !== fullMask(t.field.width)) a.alu64('and', r, imm(t.rawMask | 0));
      a.jmp('jeq', r, imm(0), target);
    }
    this.release(r);
  }

  /** if (v OP e) goto target, with e a constant when possible. `absent` for fields missing in e. */
  private jumpCmp(op: JmpOp, v: Reg, e: Expr, target: string, absent: string, known: ReadonlySet<Layer>): void {
    const k = constValue(e);
    if (k !== undefined && k >= 0 && k <= 0x7fffffff) {
      this.a.jmp(op, v, imm(k), target);
      return;
    }
    const r = this.expr(e, absent, known);
    this.a.jmp(op, v, r, target);
    this.release(r);
  }

  private compare(op: '==' | '!=' | '<' | '<=' | '>' | '>=', left: Expr, right: Expr, no: string, known: ReadonlySet<Layer>): void {
    // Keep a field on the left, so address-wide fields and `either` fields are handled below.
    if (left.kind !== 'field' && right.kind === 'field') {
      [left, right] = [right, left];
      op = ({ '==': '==', '!=': '!=', '<': '>', '<=': '>=', '>': '<', '>=': '<=' } as const)[op];
    }
    if (left.kind === 'field' && left.field.either) {
      const [x, y] = left.field.either.map((n) => this.field(n));
      const a = this.a;
      // Both halves live in one layer: test it once.
      this.layerTest(x!.layer, no, known);
      const k = new Set([...known, x!.layer]);
      if (op === '!=') {
        // Wireshark: `ip.addr != X` holds when neither address is X.
        this.compare('!=', { ...left, field: x! }, right, no, k);
        this.compare('!=', { ...left, field: y! }, right, no, k);
      } else {
        const second = this.fresh('either');
        const yes = this.fresh('either_yes');
        this.compare(op, { ...left, field: x! }, right, second, k);
        a.ja(yes).label(second);
        this.compare(op, { ...left, field: y! }, right, no, k);
        a.label(yes);
      }
      return;
    }
    if (left.kind === 'field' && (left.field.width === 16 || left.field.width === 6)) {
      return this.compareBytes(op, left.field, right, no, known);
    }
    let l = this.expr(left, no, known);
    let rightExpr = right;
    if (right.kind === 'addr' && right.prefix !== undefined && right.family === 'ipv4') {
      const mask = right.prefix === 0 ? 0 : (0xffffffff << (32 - right.prefix)) >>> 0;
      l = this.maskReg(l, mask);
      rightExpr = { kind: 'num', value: (bytesToU32(right.bytes) & mask) >>> 0, span: right.span };
    }
    const negated: Record<typeof op, JmpOp> = { '==': 'jne', '!=': 'jeq', '<': 'jge', '<=': 'jgt', '>': 'jle', '>=': 'jlt' };
    this.jumpCmp(negated[op], l, rightExpr, no, no, known);
    this.release(l);
  }

  private maskReg(r: Reg, mask: number): Reg {
    if (mask === 0xffffffff) return r;
    if (mask <= 0x7fffffff) {
      this.a.alu64('and', r, imm(mask));
    } else {
      const m = this.alloc();
      this.loadConst(m, mask);
      this.a.alu64('and', r, m);
      this.release(m);
    }
    return r;
  }

  /** ==, != of a 6- or 16-byte field (MAC, IPv6 address) against a constant, optionally a prefix. */
  private compareBytes(op: string, f: FieldDef, right: Expr, no: string, known: ReadonlySet<Layer>): void {
    if (right.kind !== 'addr') {
      throw new CompileError(`rule "${this.rule?.name}": ${f.name} can only be compared with an address`);
    }
    if (op !== '==' && op !== '!=') {
      throw new CompileError(`rule "${this.rule?.name}": ${f.name} supports only == and !=`);
    }
    const a = this.a;
    const prefix = right.prefix ?? f.width * 8;
    const differ = op === '==' ? no : this.fresh('bytes_differ');
    const at = this.access(f, no, known);
    const w = this.alloc();
    // Compare in 4-byte (and for MAC a final 2-byte) raw words; masks cut the prefix.
    for (let off = 0; off < f.width; off += 4) {
      const size = Math.min(4, f.width - off) as 2 | 4;
      const bits = Math.max(0, Math.min(size * 8, prefix - off * 8));
      if (bits === 0) break;
      const maskBytes = new Uint8Array(size);
      const wantBytes = new Uint8Array(size);
      for (let i = 0; i < size; i++) {
        const bitsHere = Math.max(0, Math.min(8, bits - i * 8));
        maskBytes[i] = (0xff << (8 - bitsHere)) & 0xff;
        wantBytes[i] = right.bytes[off + i]! & maskBytes[i]!;
      }
      const rawMask = leWord(maskBytes);
      const rawWant = leWord(wantBytes);
      a.ldx(size, w, at.base, at.off + off);
      if (rawMask !== (size === 4 ? 0xffffffff : 0xffff)) {
        const m = this.alloc();
        this.loadConst(m, rawMask);
        a.alu64('and', w, m);
        this.release(m);
      }
      const k = this.alloc();
      this.loadConst(k, rawWant);
      a.jmp('jne', w, k, differ);
      this.release(k);
    }
    at.release();
    this.release(w);
    if (op === '!=') {
      a.ja(no).label(differ);
    }
  }

  // ---------------------------------------------------------------- expressions

  private field(name: string): FieldDef {
    const f = this.opts.lookupField(name);
    if (!f) throw new CompileError(`internal: field ${name} is not in the catalog`);
    return f;
  }

  private loadConst(r: Reg, value: number): void {
    if (value >= -0x80000000 && value <= 0x7fffffff) this.a.movImm(r, value);
    else if (value >= 0 && value <= 0xffffffff) this.a.mov32(r, imm(value | 0));
    else this.a.ldImm64(r, BigInt(value));
  }

  /** Evaluates a numeric expression into a fresh register; jumps to `absent` if a field is missing. */
  private expr(e: Expr, absent: string, known: ReadonlySet<Layer>): Reg {
    const a = this.a;
    switch (e.kind) {
      case 'num': {
        const r = this.alloc();
        this.loadConst(r, e.value);
        return r;
      }
      case 'addr': {
        if (e.family !== 'ipv4') throw new CompileError(`rule "${this.rule?.name}": an ${e.family} address is not a number`);
        const r = this.alloc();
        this.loadConst(r, bytesToU32(e.bytes));
        return r;
      }
      case 'field':
        return this.readField(e.field, absent, known);
      case 'arith': {
        const l = this.expr(e.left, absent, known);
        const k = constValue(e.right);
        const op = ARITH[e.op];
        if (k !== undefined && k >= 0 && k <= 0x7fffffff) {
          a.alu64(op, l, imm(k));
        } else {
          const r = this.expr(e.right, absent, known);
          a.alu64(op, l, r);
          this.release(r);
        }
        return l;
      }
      case 'call': {
        const [x, y] = e.args;
        const l = this.expr(x!, absent, known);
        const r = this.expr(y!, absent, known);
        if (e.fn === 'min' || e.fn === 'max') {
          const keep = this.fresh('minmax');
          a.jmp(e.fn === 'min' ? 'jle' : 'jge', l, r, keep).mov64(l, r).label(keep);
          this.release(r);
          return l;
        }
        // random(lo, hi), inclusive; bounds given the wrong way round are swapped.
        const ordered = this.fresh('rnd_ordered');
        a.jmp('jle', l, r, ordered);
        const t = this.alloc();
        a.mov64(t, l).mov64(l, r).mov64(r, t);
        this.release(t);
        a.label(ordered);
        a.alu64('sub', r, l).alu64('add', r, imm(1)); // span = hi - lo + 1
        const d = this.alloc();
        this.draw(d);
        a.alu64('mod', d, r).alu64('add', l, d);
        this.release(r, d);
        return l;
      }
    }
  }

  /**
   * Where `width` bytes at `off` of f's layer are: a base register and an offset from it.
   * IPv4/IPv6 fields are read through r7 and L4 fields through r8, whose fixed headers the
   * parser (or reloadHeaders) checked against data_end; frame, Ethernet and VLAN fields from
   * the start of the packet, checked here. Jumps to `absent` when the layer is missing.
   */
  private access(f: FieldDef, absent: string, known: ReadonlySet<Layer>, off = f.offset, width: number = f.width): Access {
    this.layerTest(f.layer, absent, known);
    switch (f.layer) {
      case 'ip':
      case 'ipv6':
        return { base: L3, off, release: () => {} };
      case 'tcp':
      case 'udp':
      case 'icmp':
      case 'icmpv6':
        return { base: L4, off, release: () => {} };
      default: {
        const a = this.a;
        const p = this.alloc();
        const end = this.alloc();
        this.loadBounds(p, end);
        const start = (f.layer === 'vlan' ? 14 : 0) + off;
        if (start !== 0) a.alu64('add', p, imm(start));
        const last = this.alloc();
        a.mov64(last, p).alu64('add', last, imm(width)).jmp('jgt', last, end, absent);
        this.release(last, end);
        return { base: p, off: 0, release: () => this.release(p) };
      }
    }
  }

  /** Reads a numeric field (user-visible value) into a fresh register. */
  private readField(f: FieldDef, absent: string, known: ReadonlySet<Layer>): Reg {
    const a = this.a;
    if (f.either) throw new CompileError(`rule "${this.rule?.name}": ${f.name} matches either of two fields and has no single value`);
    if (f.special === 'frame.len') {
      const r = this.alloc();
      if (this.kind === 'xdp') {
        a.ldx(8, r, FP, SLOT_FLEN);
      } else {
        a.ldx(4, r, this.ctx, SKB.len);
      }
      return r;
    }
    if (f.special === 'tcp.len') return this.tcpPayloadLength(absent, known);
    if (f.width !== 1 && f.width !== 2 && f.width !== 4) {
      throw new CompileError(`rule "${this.rule?.name}": ${f.name} is ${f.width} bytes wide and can only be compared with an address`);
    }
    const at = this.access(f, absent, known);
    const r = this.alloc();
    a.ldx(f.width, r, at.base, at.off);
    at.release();
    if (f.width > 1) a.be(r, (f.width * 8) as 16 | 32);
    if (f.shift) a.alu64('rsh', r, imm(f.shift));
    if (f.mask !== fullMask(f.width)) this.maskReg(r, f.mask);
    if (f.scale !== 1) a.alu64('mul', r, imm(f.scale));
    return r;
  }

  /**
   * tcp.len into a fresh register, as Wireshark (4.0) computes it: the IP length field (IPv4 total
   * length; IPv6 payload length + 40) minus the bytes from the IP header to the TCP header
   * (r8 - r7: options and extension headers included), minus tcp.hdr_len. IPv4 with total
   * length 0 (segmentation offload, BIG TCP) counts to the end of the packet. Jumps to
   * `absent` when the length field leaves less than tcp.hdr_len, or less than 16 bytes (even
   * with a bogus data offset below 5, Wireshark reads up to the window first), and in a first
   * fragment: Wireshark shows no tcp.len there. The length field is not cut to the packet: a
   * capture cut by a snap length keeps its IP length, and so Wireshark's value.
   */
  private tcpPayloadLength(absent: string, known: ReadonlySet<Layer>): Reg {
    const a = this.a;
    this.layerTest('tcp', absent, known);
    const r = this.alloc();
    const t = this.alloc();
    const v6 = this.fresh('tcplen_v6');
    const sized = this.fresh('tcplen_sized');
    if (!known.has('ipv6')) {
      if (!known.has('ip')) a.jmp('jset', LAYERS, imm(LAYER_BIT.ipv6), v6);
      // A first fragment (MF set; a later one has no TCP layer) carries part of the segment.
      a.ldx(1, r, L3, 6).jmp('jset', r, imm(RAW_IP_MF_BYTE), absent);
      a.ldx(2, r, L3, 2).be(r, 16);
      a.jmp('jne', r, imm(0), sized);
      // Total length 0: the packet's length from the IP header on (pointer difference: the
      // verifier allows it to programs loaded with CAP_PERFMON, as the parser's walk needs too).
      if (this.kind === 'xdp') a.ldx(8, r, FP, SLOT_FLEN);
      else a.ldx(4, r, this.ctx, SKB.len);
      const data = this.alloc();
      a.ldx(4, data, this.ctx, CTX[this.kind].data).mov64(t, L3).alu64('sub', t, data).alu64('sub', r, t);
      this.release(data);
      a.ja(sized);
    }
    if (!known.has('ip')) {
      a.label(v6);
      a.jmp('jset', LAYERS, imm(FRAGMENT_BIT), absent);
      a.ldx(2, r, L3, 4).be(r, 16).alu64('add', r, imm(40));
    }
    a.label(sized);
    // IP payload per the length field: may be negative (a length below the headers).
    a.mov64(t, L4).alu64('sub', t, L3).alu64('sub', r, t);
    // Wireshark reads the header up to the window (16 bytes) before it counts the payload.
    a.jmp('jslt', r, imm(16), absent);
    a.ldx(1, t, L4, 12).alu64('rsh', t, imm(4)).alu64('lsh', t, imm(2));
    a.jmp('jgt', t, r, absent);
    a.alu64('sub', r, t);
    this.release(t);
    return r;
  }

  // ---------------------------------------------------------------- actions

  /** Stores the value of a `set` into its stack slot (16 bytes: room for an IPv6 address). */
  private computeSet(s: Extract<Action, { kind: 'set' }>, slot: number, skip: string, known: ReadonlySet<Layer>): void {
    const a = this.a;
    const f = s.field;
    if (f.width === 6 || f.width === 16) {
      const src = s.value;
      if (src.kind === 'addr') {
        for (let off = 0; off < f.width; off += 4) {
          const size = Math.min(4, f.width - off);
          const r = this.alloc();
          this.loadConst(r, leWord(src.bytes.subarray(off, off + size)));
          a.stx(size === 4 ? 4 : 2, FP, slot + off, r);
          this.release(r);
        }
      } else if (src.kind === 'field' && src.field.width === f.width) {
        const at = this.access(src.field, skip, known);
        const w = this.alloc();
        for (let off = 0; off < f.width; off += 4) {
          const size = Math.min(4, f.width - off) as 2 | 4;
          a.ldx(size, w, at.base, at.off + off).stx(size, FP, slot + off, w);
        }
        at.release();
        this.release(w);
      } else {
        throw new CompileError(`rule "${this.rule?.name}": ${f.name} can only be set to an address or a field of the same kind`);
      }
      return;
    }
    const r = this.expr(s.value, skip, known);
    a.stx(8, FP, slot, r);
    this.release(r);
  }

  /** Writes one field from its stack slot and fixes the checksums that cover it. */
  private writeSet(s: Extract<Action, { kind: 'set' }>, slot: number, fixChecksums: boolean, known: ReadonlySet<Layer>): void {
    const a = this.a;
    const f = s.field;
    const done = this.fresh('set_done');
    const covers = fixChecksums ? f.covers : [];
    if (f.width === 6 || f.width === 16) {
      // Whole-word writes; checksum deltas per 4-byte word (only IPv6 addresses are covered).
      for (let off = 0; off < f.width; off += 4) {
        const size = Math.min(4, f.width - off) as 2 | 4;
        this.writeWord(f, f.offset + off, size, slot + off, undefined, covers, done, known);
      }
      a.label(done);
      return;
    }
    // Sub-word fields under a checksum are written as their aligned 16-bit word, so the
    // checksum delta is computed on the same words the checksum sums.
    let off = f.offset;
    let width: 1 | 2 | 4 = f.width as 1 | 2 | 4;
    let shift = f.shift;
    if (width === 1 && covers.length > 0) {
      shift += off % 2 === 0 ? 8 : 0;
      off -= off % 2;
      width = 2;
    }
    this.writeWord(f, off, width, slot, { shift, mask: f.mask, scale: f.scale }, covers, done, known);
    // A new header length moves the end of what the header checksum covers: bytes join or
    // leave it, which the one word's delta above cannot know.
    if (f.name === 'ip.hdr_len' && covers.includes('ipv4-header')) this.resumIpv4Header(done, known);
    a.label(done);
  }

  /**
   * The IPv4 header checksum summed again over the header length the header now declares
   * (20 to 60 bytes), as a receiver checks it. When that header is not wholly in the frame (or
   * declares less than 20 bytes, which a receiver refuses anyway), the incremental update made
   * by the write stands. Raw little-endian words throughout: the one's complement sum does not
   * depend on the byte order (RFC 1071).
   */
  private resumIpv4Header(skip: string, known: ReadonlySet<Layer>): void {
    const a = this.a;
    this.layerTest('ip', skip, new Set([...known, 'ip'])); // the write just made found it
    const n = this.alloc(), sum = this.alloc(), t = this.alloc(), end = this.alloc();
    const fold = this.fresh('ihl_fold');
    a.ldx(1, n, L3, 0).alu64('and', n, imm(0x0f)).alu64('lsh', n, imm(2)).jmp('jlt', n, imm(20), skip);
    a.ldx(4, end, this.ctx, CTX[this.kind].dataEnd).movImm(sum, 0);
    for (let word = 0; word < 15; word++) {
      if (word >= 5) {
        a.jmp('jle', n, imm(4 * word), fold);
        a.mov64(t, L3).alu64('add', t, imm(4 * word + 4)).jmp('jgt', t, end, skip);
      }
      a.ldx(4, t, L3, 4 * word).alu64('add', sum, t);
    }
    // Without the checksum word itself (one's complement subtraction: add its complement).
    a.label(fold).ldx(2, t, L3, 10).alu64('xor', t, imm(0xffff)).alu64('add', sum, t);
    for (let i = 0; i < 3; i++) a.mov64(t, sum).alu64('rsh', t, imm(16)).alu64('and', sum, imm(0xffff)).alu64('add', sum, t);
    a.alu64('xor', sum, imm(0xffff)).stx(2, L3, 10, sum);
    this.release(n, sum, t, end);
  }

  /**
   * Read-modify-write of `width` bytes at `off` in f's layer. With `bits`, the slot holds the
   * user-visible value, placed into the word; without, the slot holds the raw bytes to store.
   */
  private writeWord(
    f: FieldDef, off: number, width: 1 | 2 | 4, slot: number,
    bits: { shift: number; mask: number; scale: number } | undefined, covers: FieldDef['covers'], skip: string,
    known: ReadonlySet<Layer>,
  ): void {
    const a = this.a;
    const OLD = SLOT_OLD;
    const NEW = SLOT_NEW;
    const at = this.access(f, skip, known, off, width);
    const w = this.alloc();
    a.ldx(width, w, at.base, at.off).stx(8, FP, OLD, w);
    if (bits) {
      const v = this.alloc();
      if (width > 1) a.be(w, (width * 8) as 16 | 32);
      a.ldx(8, v, FP, slot);
      if (bits.scale !== 1) a.alu64('div', v, imm(bits.scale));
      this.maskReg(v, bits.mask);
      if (bits.shift) a.alu64('lsh', v, imm(bits.shift));
      const clear = (~((bits.mask * 2 ** bits.shift) >>> 0) >>> 0) & fullMask(width);
      this.maskReg(w, clear);
      a.alu64('or', w, v);
      if (width > 1) a.be(w, (width * 8) as 16 | 32);
      this.release(v);
    } else {
      a.ldx(width, w, FP, slot);
    }
    a.stx(width, at.base, at.off, w).stx(8, FP, NEW, w);
    at.release();
    if (width === 1) {
      this.release(w);
      return; // a lone byte is never under a checksum (see writeSet)
    }
    const k = new Set([...known, f.layer]);
    for (const cover of covers) {
      if (cover === 'ipv4-header') this.fixIpv4Header(OLD, NEW, width, k);
      else if (cover === 'l4') this.fixL4(false, f, OLD, NEW, width, k);
    }
    if (covers.includes('l4-pseudo')) {
      if (f.width === 1 && f.offset % 2 === 0) {
        // A protocol byte (ipv6.nxt) is the high byte of its header word but the low byte of
        // the pseudo-header's: move the old and new bytes there (raw words load little-endian).
        for (const slot of [OLD, NEW]) {
          a.ldx(8, w, FP, slot).alu64('and', w, imm(0xff)).alu64('lsh', w, imm(8)).stx(8, FP, slot, w);
        }
      }
      this.fixL4(true, f, OLD, NEW, width, k);
    }
    this.release(w);
  }

  /** IPv4 header checksum, incrementally (RFC 1624), on raw words. */
  private fixIpv4Header(oldSlot: number, newSlot: number, width: 2 | 4, known: ReadonlySet<Layer>): void {
    const skip = this.fresh('noip4');
    this.layerTest('ip', skip, known);
    this.inlineCsumUpdate(L3, 10, oldSlot, newSlot, width, false);
    this.a.label(skip);
  }

  /**
   * The L4 checksum after a change of `width` raw bytes: in the L4 header itself, or (pseudo)
   * in the addresses, protocol or length the pseudo-header repeats. At XDP it is computed
   * inline; at tc through bpf_l4_csum_replace, which also handles packets whose checksum the
   * kernel still owes (CHECKSUM_PARTIAL), where only pseudo-header changes may touch it.
   */
  private fixL4(pseudo: boolean, f: FieldDef, oldSlot: number, newSlot: number, width: 2 | 4, known: ReadonlySet<Layer>): void {
    const a = this.a;
    for (const t of l4ChecksumTargets(pseudo, f)) {
      const skip = this.fresh(`no${t.layer}`);
      this.layerTest(t.layer, skip, known);
      if (pseudo && isIpv6NextHeader(f)) {
        // The pseudo-header names the upper-layer protocol, which ipv6.nxt is only when no
        // extension header follows the fixed header.
        const w = this.alloc();
        a.mov64(w, L4).alu64('sub', w, L3).jmp('jne', w, imm(40), skip);
        this.release(w);
      }
      const udp = t.layer === 'udp';
      if (this.kind === 'xdp') {
        this.inlineCsumUpdate(L4, t.off, oldSlot, newSlot, width, udp);
      } else {
        // bpf_l4_csum_replace(skb, offset, from, to, flags); r7/r8's offsets saved for reloadHeaders.
        a.ldx(4, R1, CTXR, CTX[this.kind].data);
        a.mov64(R2, L3).alu64('sub', R2, R1).stx(2, FP, SLOT_L3_OFF, R2);
        a.mov64(R2, L4).alu64('sub', R2, R1).stx(2, FP, SLOT_L4_OFF, R2).alu64('add', R2, imm(t.off));
        a.mov64(R1, CTXR).ldx(8, R3, FP, oldSlot).ldx(8, R4, FP, newSlot);
        a.movImm(R5, width | (pseudo ? BPF_F_PSEUDO_HDR : 0) | (udp ? BPF_F_MARK_MANGLED_0 : 0));
        a.call(HELPER.l4_csum_replace);
        this.reloadHeaders();
      }
      a.label(skip);
    }
  }

  /** The 16-bit checksum at base+off updated for raw old → new words; UDP keeps 0 as "no checksum". */
  private inlineCsumUpdate(base: Reg, off: number, oldSlot: number, newSlot: number, width: 2 | 4, udp: boolean): void {
    const a = this.a;
    const sum = this.alloc();
    const t = this.alloc();
    const done = this.fresh('csum_done');
    a.ldx(2, sum, base, off);
    if (udp) a.jmp('jeq', sum, imm(0), done);
    a.alu64('xor', sum, imm(0xffff));
    const addWords = (slot: number, invert: boolean): void => {
      a.ldx(8, t, FP, slot);
      if (width === 4) {
        const hi = this.alloc();
        a.mov64(hi, t).alu64('rsh', hi, imm(16)).alu64('and', t, imm(0xffff));
        if (invert) a.alu64('xor', hi, imm(0xffff)).alu64('xor', t, imm(0xffff));
        a.alu64('add', sum, hi);
        this.release(hi);
      } else if (invert) {
        a.alu64('xor', t, imm(0xffff));
      }
      a.alu64('add', sum, t);
    };
    addWords(oldSlot, true);
    addWords(newSlot, false);
    for (let i = 0; i < 2; i++) {
      a.mov64(t, sum).alu64('rsh', t, imm(16)).alu64('and', sum, imm(0xffff)).alu64('add', sum, t);
    }
    a.alu64('xor', sum, imm(0xffff));
    if (udp) {
      const nz = this.fresh('udp_nz');
      a.jmp('jne', sum, imm(0), nz).movImm(sum, 0xffff).label(nz);
    }
    a.stx(2, base, off, sum).label(done);
    this.release(sum, t);
  }
}

interface Access {
  base: Reg;
  off: number;
  release(): void;
}

/** A test of some bits of one field's container (`tcp.flags.syn`, `tcp.flags & 0x12`). */
interface BitsTest {
  kind: 'bits';
  /** The container: the field's layer, offset and width. */
  field: FieldDef;
  /** The bits, as they appear in the register after a raw (little-endian) load. */
  rawMask: number;
}

type OrTest = Cond | BitsTest;

/** The bits a truthy expression tests, when it is a field or a field & constant. */
function bitTest(e: Expr): BitsTest | undefined {
  let f: FieldDef;
  let k = 0xffffffffn;
  if (e.kind === 'field') {
    f = e.field;
  } else if (e.kind === 'arith' && e.op === '&' && e.left.kind === 'field' && e.right.kind === 'num') {
    f = e.left.field;
    k = BigInt(e.right.value);
  } else if (e.kind === 'arith' && e.op === '&' && e.right.kind === 'field' && e.left.kind === 'num') {
    f = e.right.field;
    k = BigInt(e.left.value);
  } else {
    return undefined;
  }
  if (f.either || f.special || (f.width !== 1 && f.width !== 2 && f.width !== 4)) return undefined;
  // value & k != 0  ⇔  container & ((mask & k) << shift) != 0 (the scale only multiplies by ≥ 1).
  const be = Number(((BigInt(f.mask) & k) << BigInt(f.shift)) & BigInt(fullMask(f.width)));
  let raw = 0;
  for (let i = 0; i < f.width; i++) raw += Math.floor(be / 2 ** (8 * (f.width - 1 - i))) % 256 * 2 ** (8 * i);
  return { kind: 'bits', field: f, rawMask: raw };
}

/** The operands of an `or` chain, with bit tests of one container merged into one test. */
function orTests(c: Cond): OrTest[] {
  const flat: Cond[] = [];
  const walk = (x: Cond): void => {
    if (x.kind === 'or') {
      walk(x.left);
      walk(x.right);
    } else {
      flat.push(x);
    }
  };
  walk(c);
  const out: OrTest[] = [];
  const groups = new Map<string, BitsTest>();
  for (const x of flat) {
    const bits = x.kind === 'truthy' ? bitTest(x.expr) : undefined;
    if (!bits) {
      out.push(x);
      continue;
    }
    const key = `${bits.field.layer}:${bits.field.offset}:${bits.field.width}`;
    const g = groups.get(key);
    if (g) {
      g.rawMask = (g.rawMask | bits.rawMask) >>> 0;
    } else {
      groups.set(key, bits);
      out.push(bits);
    }
  }
  return out;
}

/** Layers a condition needs present to hold (a test of an absent field is false). */
function requiredLayers(c: Cond): Set<Layer> {
  switch (c.kind) {
    case 'true':
      return new Set();
    case 'proto':
      return new Set(c.layer === 'frame' ? [] : [c.layer]);
    case 'truthy':
      return exprLayers(c.expr);
    case 'cmp':
      return new Set([...exprLayers(c.left), ...exprLayers(c.right)]);
    case 'in':
      return new Set([exprLayers(c.expr), ...c.items.flatMap((it) => [exprLayers(it.lo), ...(it.hi ? [exprLayers(it.hi)] : [])])].flatMap((s) => [...s]));
    case 'and':
      return new Set([...requiredLayers(c.left), ...requiredLayers(c.right)]);
    case 'or': {
      const r = requiredLayers(c.right);
      return new Set([...requiredLayers(c.left)].filter((l) => r.has(l)));
    }
    case 'not':
      return new Set();
  }
}

/** Layers of the fields an expression reads ('frame' left out: always there). */
function exprLayers(e: Expr, out = new Set<Layer>()): Set<Layer> {
  switch (e.kind) {
    case 'field':
      if (e.field.layer !== 'frame') out.add(e.field.layer);
      break;
    case 'arith':
      exprLayers(e.left, out);
      exprLayers(e.right, out);
      break;
    case 'call':
      for (const x of e.args) exprLayers(x, out);
      break;
    default:
      break;
  }
  return out;
}

/** Layers a condition mentions anywhere (tested, compared, negated). */
function condLayers(c: Cond, out: Set<Layer>): void {
  switch (c.kind) {
    case 'true':
      return;
    case 'proto':
      if (c.layer !== 'frame') out.add(c.layer);
      return;
    case 'truthy':
      exprLayers(c.expr, out);
      return;
    case 'cmp':
      exprLayers(c.left, out);
      exprLayers(c.right, out);
      return;
    case 'in':
      exprLayers(c.expr, out);
      for (const it of c.items) {
        exprLayers(it.lo, out);
        if (it.hi) exprLayers(it.hi, out);
      }
      return;
    case 'and':
    case 'or':
      condLayers(c.left, out);
      condLayers(c.right, out);
      return;
    case 'not':
      condLayers(c.arg, out);
  }
}

/** Every layer the rules read, write, test or fix a checksum in: what the parser must find. */
function wantedLayers(rules: Rule[]): Set<Layer> {
  const out = new Set<Layer>();
  for (const r of rules) {
    condLayers(r.match, out);
    // The connection key reads addresses and ports of every protocol it knows.
    if (r.perConnection || r.actions.some((x) => x.kind === 'corrupt' || x.kind === 'truncate' || x.kind === 'reject' || x.kind === 'reorder')) for (const l of ['ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6'] as const) out.add(l);
    for (const act of r.actions) {
      if (act.kind !== 'set') continue;
      if (act.field.layer !== 'frame') out.add(act.field.layer);
      exprLayers(act.value, out);
      if (r.checksum !== 'fix') continue;
      for (const cover of act.field.covers) {
        if (cover === 'ipv4-header') out.add('ip');
        else for (const t of l4ChecksumTargets(cover === 'l4-pseudo', act.field)) out.add(t.layer);
      }
    }
  }
  return out;
}

type L4Layer = 'tcp' | 'udp' | 'icmp' | 'icmpv6';
const L4_LAYERS: readonly L4Layer[] = ['tcp', 'udp', 'icmp', 'icmpv6'];
/** A field of each L4 layer (any will do: fixL4 on it targets that layer's own checksum). */
const L4_ANY_FIELD: Record<L4Layer, string> = { tcp: 'tcp.srcport', udp: 'udp.srcport', icmp: 'icmp.type', icmpv6: 'icmpv6.type' };
const isL4 = (l: Layer): l is L4Layer => (L4_LAYERS as readonly string[]).includes(l);

/** The L4 checksums a change of field f must fix: its own layer's, or those whose pseudo-header repeats it. */
function l4ChecksumTargets(pseudo: boolean, f: FieldDef): Array<{ layer: L4Layer; off: number }> {
  if (isL4(f.layer)) return [{ layer: f.layer, off: L4_CSUM[f.layer] }]; // udp.length: UDP's pseudo-header repeats it
  if (!pseudo) return [];
  const out: Array<{ layer: L4Layer; off: number }> = [{ layer: 'tcp', off: 16 }];
  // UDP's pseudo-header carries the UDP length field, not the IP length (RFC 768, RFC 8200 8.1).
  if (!isL3Length(f)) out.push({ layer: 'udp', off: 6 });
  if (f.layer === 'ipv6') out.push({ layer: 'icmpv6', off: 2 });
  return out;
}

const ARITH: Record<Extract<Expr, { kind: 'arith' }>['op'], AluOp> = {
  '+': 'add', '-': 'sub', '*': 'mul', '/': 'div', '%': 'mod', '&': 'and', '|': 'or', '^': 'xor', '<<': 'lsh', '>>': 'rsh',
};

const L4_CSUM = { tcp: 16, udp: 6, icmp: 2, icmpv6: 2 } as const;

/** The IP header's length field: ip.len (total length) or ipv6.plen (payload length). */
function isL3Length(f: FieldDef): boolean {
  return (f.layer === 'ip' && f.offset === 2 && f.width === 2) || (f.layer === 'ipv6' && f.offset === 4 && f.width === 2);
}

/** ipv6.nxt: the next-header byte of the fixed IPv6 header. */
function isIpv6NextHeader(f: FieldDef): boolean {
  return f.layer === 'ipv6' && f.offset === 6 && f.width === 1;
}

function fullMask(width: number): number {
  return width >= 4 ? 0xffffffff : (1 << (width * 8)) - 1;
}

function constValue(e: Expr): number | undefined {
  return e.kind === 'num' ? e.value : undefined;
}

function bytesToU32(b: Uint8Array): number {
  return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
}

/** The number a little-endian load of these bytes gives (how raw packet words appear in registers). */
function leWord(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}

export type { Operand };
