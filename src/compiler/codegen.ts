/**
 * Rules to eBPF. One program per (interface, hook): the headers are parsed once, then every
 * rule is evaluated in order. Register plan, kept for the whole program:
 *
 *   r6  the context (xdp_md or __sk_buff)
 *   r7  offset of the L3 header from the start of the frame (0 when there is none)
 *   r8  offset of the L4 header (0 when not visible: no IP, unknown protocol, non-first fragment)
 *   r9  bit set of the layers present (LAYER_BIT)
 *   r0-r5  temporaries; helper calls clobber them, so nothing lives in them across a call.
 *
 * Stack: fp-8 state map value pointer (0 until looked up), fp-16 every-N map value pointer,
 * fp-24 map key, fp-32/-40 a write's old and new words, fp-48 the XDP frame length, fp-64 and
 * down: the values of a rule's `set` actions, computed before any write so that every
 * right-hand side reads the packet as it was before the rule touched it.
 *
 * Every packet access reloads data/data_end from the context and checks its bounds, so the
 * verifier accepts it after helpers that move packet data (bpf_l4_csum_replace at tc) and a
 * truncated frame is never read past its end: a field that is not there makes its comparison
 * false and its rule's actions skip.
 */
import { Assembler, imm, type AluOp, type JmpOp, type Operand } from '../bpf/asm.js';
import { BPF_ADD, BPF_FETCH, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, type Reg } from '../bpf/opcodes.js';
import type { Action, Cond, Expr, FieldDef, Hook, Rule, RuleGroup } from '../rules/ast.js';
import { NetmangleError } from '../errors.js';
import {
  BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, CTX, EVERY_MAP, HELPER, LAYER_BIT, SEED_SECTION, SKB, STATE_GSO, STATE_MAP, STATE_PRNG,
  progKindOf, ruleCounterOffset, verdicts, type ProgKind,
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
const MAX_SETS = 28;

const ETH_P_IP = 0x0800, ETH_P_IPV6 = 0x86dd, ETH_P_8021Q = 0x8100, ETH_P_8021AD = 0x88a8;
/** IPv6 extension headers walked before the L4 header, at most this many. */
const IPV6_EXT_MAX = 6;

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
}

export interface GenResult {
  asm: Assembler;
  /** Whether the program uses the every-N map. */
  usesEvery: boolean;
}

export function generate(group: RuleGroup, opts: GenOptions): GenResult {
  const g = new Gen(group.hook, opts);
  g.program(group.rules);
  return { asm: g.a, usesEvery: g.usesEvery };
}

class Gen {
  readonly a = new Assembler();
  readonly kind: ProgKind;
  readonly hook: Hook;
  usesEvery = false;
  private labelN = 0;
  private free: Reg[] = [R1, R2, R3, R4, R5, R0];
  private readonly v: { none: number; pass: number; drop: number };
  private rule?: Rule;

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
    a.mov64(CTXR, R1);
    a.st(8, FP, SLOT_STATE, 0);
    a.st(8, FP, SLOT_EVERY, 0);
    if (this.kind === 'xdp' && JSON.stringify(rules, (k, v) => (k === 'field' && v?.special ? v.special : v)).includes('"frame.len"')) {
      // bpf_xdp_get_buff_len: the verifier forbids arithmetic on data_end, so ask the kernel.
      a.mov64(R1, CTXR).call(HELPER.xdp_get_buff_len).stx(8, FP, SLOT_FLEN, R0);
    }
    this.parse();
    rules.forEach((rule, i) => this.compileRule(rule, i));
    a.label('verdict_none').movImm(R0, this.v.none).exit();
  }

  /** dst = packet data pointer, end = data_end (both reloaded from the context). */
  private loadBounds(data: Reg, end: Reg): void {
    const c = CTX[this.kind];
    this.a.ldx(4, data, CTXR, c.data).ldx(4, end, CTXR, c.dataEnd);
  }

  /** Fills r7, r8, r9 from the headers. Layers it cannot see stay absent. */
  private parse(): void {
    const a = this.a;
    const done = 'parsed';
    a.movImm(L3, 0).movImm(L4, 0).movImm(LAYERS, 0);
    this.loadBounds(R2, R3);
    a.mov64(R4, R2).alu64('add', R4, imm(14)).jmp('jgt', R4, R3, done);
    a.alu64('or', LAYERS, imm(LAYER_BIT.eth));
    a.ldx(2, R5, R2, 12).be(R5, 16).movImm(L3, 14);
    // Up to two VLAN tags (802.1Q, 802.1ad); vlan.* fields read the outer one.
    for (let tag = 0; tag < 2; tag++) {
      const next = this.fresh('novlan');
      a.jmp('jeq', R5, imm(ETH_P_8021Q), `vlan${tag}`).jmp('jne', R5, imm(ETH_P_8021AD), next);
      a.label(`vlan${tag}`);
      a.mov64(R4, R2).alu64('add', R4, imm(18 + 4 * tag)).jmp('jgt', R4, R3, done);
      a.alu64('or', LAYERS, imm(LAYER_BIT.vlan));
      a.ldx(2, R5, R2, 16 + 4 * tag).be(R5, 16).movImm(L3, 18 + 4 * tag);
      a.label(next);
    }
    a.jmp('jeq', R5, imm(ETH_P_IP), 'ip4').jmp('jeq', R5, imm(ETH_P_IPV6), 'ip6').ja(done);

    // IPv4, with options; L4 only in the first fragment.
    a.label('ip4');
    a.mov64(R4, R2).alu64('add', R4, L3).mov64(R1, R4).alu64('add', R1, imm(20)).jmp('jgt', R1, R3, done);
    a.ldx(1, R1, R4, 0).mov64(R0, R1).alu64('and', R0, imm(0xf0)).jmp('jne', R0, imm(0x40), done);
    a.alu64('and', R1, imm(0x0f)).jmp('jlt', R1, imm(5), done).alu64('lsh', R1, imm(2));
    a.alu64('or', LAYERS, imm(LAYER_BIT.ip));
    a.ldx(2, R0, R4, 6).be(R0, 16).alu64('and', R0, imm(0x1fff)).jmp('jne', R0, imm(0), done);
    a.mov64(L4, L3).alu64('add', L4, R1);
    a.ldx(1, R0, R4, 9);
    a.jmp('jeq', R0, imm(6), 'l4_tcp').jmp('jeq', R0, imm(17), 'l4_udp').jmp('jeq', R0, imm(1), 'l4_icmp');
    a.movImm(L4, 0).ja(done);

    // IPv6, walking a bounded number of extension headers.
    a.label('ip6');
    a.mov64(R4, R2).alu64('add', R4, L3).mov64(R1, R4).alu64('add', R1, imm(40)).jmp('jgt', R1, R3, done);
    a.ldx(1, R1, R4, 0).alu64('and', R1, imm(0xf0)).jmp('jne', R1, imm(0x60), done);
    a.alu64('or', LAYERS, imm(LAYER_BIT.ipv6));
    a.ldx(1, R0, R4, 6).mov64(L4, L3).alu64('add', L4, imm(40));
    for (let i = 0; i < IPV6_EXT_MAX; i++) {
      const next = this.fresh('ext');
      const frag = this.fresh('frag');
      const ah = this.fresh('ah');
      const generic = this.fresh('opt');
      a.jmp('jeq', R0, imm(0), generic).jmp('jeq', R0, imm(43), generic).jmp('jeq', R0, imm(60), generic);
      a.jmp('jeq', R0, imm(44), frag).jmp('jeq', R0, imm(51), ah).ja('ip6_l4');
      // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first 8.
      a.label(generic);
      a.mov64(R4, R2).alu64('add', R4, L4).mov64(R1, R4).alu64('add', R1, imm(8)).jmp('jgt', R1, R3, 'ip6_nol4');
      a.ldx(1, R0, R4, 0).ldx(1, R1, R4, 1).alu64('add', R1, imm(1)).alu64('lsh', R1, imm(3)).alu64('add', L4, R1).ja(next);
      // Fragment header: 8 bytes; only the first fragment carries the L4 header.
      a.label(frag);
      a.mov64(R4, R2).alu64('add', R4, L4).mov64(R1, R4).alu64('add', R1, imm(8)).jmp('jgt', R1, R3, 'ip6_nol4');
      a.ldx(2, R1, R4, 2).be(R1, 16).alu64('and', R1, imm(0xfff8)).jmp('jne', R1, imm(0), 'ip6_nol4');
      a.ldx(1, R0, R4, 0).alu64('add', L4, imm(8)).ja(next);
      // Authentication header: length in 4-octet units, not counting the first 2.
      a.label(ah);
      a.mov64(R4, R2).alu64('add', R4, L4).mov64(R1, R4).alu64('add', R1, imm(8)).jmp('jgt', R1, R3, 'ip6_nol4');
      a.ldx(1, R0, R4, 0).ldx(1, R1, R4, 1).alu64('add', R1, imm(2)).alu64('lsh', R1, imm(2)).alu64('add', L4, R1);
      a.label(next);
    }
    a.label('ip6_l4');
    a.jmp('jeq', R0, imm(6), 'l4_tcp').jmp('jeq', R0, imm(17), 'l4_udp').jmp('jeq', R0, imm(58), 'l4_icmpv6');
    a.label('ip6_nol4').movImm(L4, 0).ja(done);

    // An L4 layer is present only when its whole fixed header is in the frame: a rule never
    // writes a field whose checksum lies beyond the end, and never half-parses a header.
    const l4 = (label: string, bit: number, size: number): void => {
      a.label(label).mov64(R4, R2).alu64('add', R4, L4).alu64('add', R4, imm(size)).jmp('jgt', R4, R3, 'l4_cut');
      a.alu64('or', LAYERS, imm(bit)).ja(done);
    };
    l4('l4_tcp', LAYER_BIT.tcp, 20);
    l4('l4_udp', LAYER_BIT.udp, 8);
    l4('l4_icmp', LAYER_BIT.icmp, 8);
    l4('l4_icmpv6', LAYER_BIT.icmpv6, 8);
    a.label('l4_cut').movImm(L4, 0);
    a.label(done);
  }

  // ---------------------------------------------------------------- rules

  private compileRule(rule: Rule, index: number): void {
    const a = this.a;
    this.rule = rule;
    const next = `rule${index}_end`;
    a.label(`rule${index}`); // no code: marks where the rule starts, for listings and --emit c
    this.cond(rule.match, next);
    this.ensureState();
    this.bumpCounter(index, 'matched');
    if (this.hook === 'egress') this.countGso();
    this.trigger(rule, index, next);

    const sets = rule.actions.filter((x): x is Extract<Action, { kind: 'set' }> => x.kind === 'set');
    if (sets.length > MAX_SETS) {
      throw new CompileError(`rule "${rule.name}" sets ${sets.length} fields; at most ${MAX_SETS} fit in one rule`, {
        hint: 'split it into several rules with the same match',
      });
    }
    // Right-hand sides first, against the unmodified packet.
    sets.forEach((s, k) => this.computeSet(s, SLOT_SETS - 16 * k, next));
    sets.forEach((s, k) => this.writeSet(s, SLOT_SETS - 16 * k, rule.checksum === 'fix'));
    this.bumpCounter(index, 'acted');
    const final = rule.actions.find((x) => x.kind === 'drop' || x.kind === 'pass');
    if (final?.kind === 'drop') {
      this.bumpCounter(index, 'dropped');
      a.movImm(R0, this.v.drop).exit();
    } else if (final?.kind === 'pass') {
      a.movImm(R0, this.v.pass).exit();
    }
    a.label(next);
    this.rule = undefined;
  }

  /** Looks the state map value up once per packet; fp-8 holds it afterwards. */
  private ensureState(): void {
    const a = this.a;
    const have = this.fresh('have_state');
    a.ldx(8, R0, FP, SLOT_STATE).jmp('jne', R0, imm(0), have);
    a.st(4, FP, SLOT_KEY, 0).ldMap(R1, STATE_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_KEY)).call(HELPER.map_lookup_elem);
    // The lookup of key 0 in a one-entry array cannot fail; the verifier still wants the test.
    a.jmp('jeq', R0, imm(0), 'verdict_none').stx(8, FP, SLOT_STATE, R0);
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

  private bumpCounter(rule: number, which: 'matched' | 'acted' | 'dropped'): void {
    const off = ruleCounterOffset(rule, which);
    this.a.ldx(8, R0, FP, SLOT_STATE).ldx(8, R1, R0, off).alu64('add', R1, imm(1)).stx(8, R0, off, R1);
  }

  /** Counts GSO super-packets at tc egress, so `run` can say that PSH-like rules see them. */
  private countGso(): void {
    const skip = this.fresh('nogso');
    this.a.ldx(4, R1, CTXR, SKB.gsoSegs).jmp('jle', R1, imm(1), skip);
    this.a.ldx(8, R0, FP, SLOT_STATE).ldx(8, R1, R0, STATE_GSO).alu64('add', R1, imm(1)).stx(8, R0, STATE_GSO, R1);
    this.a.label(skip);
  }

  private trigger(rule: Rule, index: number, skip: string): void {
    const a = this.a;
    if (rule.every !== undefined && rule.every > 1) {
      this.usesEvery = true;
      const have = this.fresh('have_every');
      a.ldx(8, R0, FP, SLOT_EVERY).jmp('jne', R0, imm(0), have);
      a.st(4, FP, SLOT_KEY, 0).ldMap(R1, EVERY_MAP).mov64(R2, FP).alu64('add', R2, imm(SLOT_KEY)).call(HELPER.map_lookup_elem);
      a.jmp('jeq', R0, imm(0), 'verdict_none').stx(8, FP, SLOT_EVERY, R0);
      a.label(have);
      // count = atomic_fetch_add(&every[index], 1) + 1; act when count % N == 0.
      a.movImm(R1, 1).atomic(8, R0, 8 * index, R1, BPF_ADD | BPF_FETCH);
      a.alu64('add', R1, imm(1)).alu64('mod', R1, imm(rule.every)).jmp('jne', R1, imm(0), skip);
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

  // ---------------------------------------------------------------- conditions

  /** Falls through when `c` holds, jumps to `no` otherwise. */
  private cond(c: Cond, no: string): void {
    const a = this.a;
    switch (c.kind) {
      case 'true':
        return;
      case 'proto': {
        if (c.layer === 'frame') return;
        const r = this.alloc();
        a.mov64(r, LAYERS).alu64('and', r, imm(LAYER_BIT[c.layer])).jmp('jeq', r, imm(0), no);
        this.release(r);
        return;
      }
      case 'truthy': {
        const r = this.expr(c.expr, no);
        a.jmp('jeq', r, imm(0), no);
        this.release(r);
        return;
      }
      case 'cmp':
        return this.compare(c.op, c.left, c.right, no);
      case 'in': {
        const yes = this.fresh('in_yes');
        const v = this.expr(c.expr, no);
        for (const item of c.items) {
          const skip = this.fresh('in_next');
          if (item.hi === undefined) {
            this.jumpCmp('jeq', v, item.lo, yes, no);
          } else {
            this.jumpCmp('jlt', v, item.lo, skip, no);
            this.jumpCmp('jle', v, item.hi, yes, no);
          }
          a.label(skip);
        }
        this.release(v);
        a.ja(no).label(yes);
        return;
      }
      case 'and':
        this.cond(c.left, no);
        this.cond(c.right, no);
        return;
      case 'or': {
        const right = this.fresh('or_right');
        const yes = this.fresh('or_yes');
        this.cond(c.left, right);
        a.ja(yes).label(right);
        this.cond(c.right, no);
        a.label(yes);
        return;
      }
      case 'not': {
        const yes = this.fresh('not_yes');
        this.cond(c.arg, yes);
        a.ja(no).label(yes);
        return;
      }
    }
  }

  /** if (v OP e) goto target, with e a constant when possible. `absent` for fields missing in e. */
  private jumpCmp(op: JmpOp, v: Reg, e: Expr, target: string, absent: string): void {
    const k = constValue(e);
    if (k !== undefined && k >= 0 && k <= 0x7fffffff) {
      this.a.jmp(op, v, imm(k), target);
      return;
    }
    const r = this.expr(e, absent);
    this.a.jmp(op, v, r, target);
    this.release(r);
  }

  private compare(op: '==' | '!=' | '<' | '<=' | '>' | '>=', left: Expr, right: Expr, no: string): void {
    // Keep a field on the left, so address-wide fields and `either` fields are handled below.
    if (left.kind !== 'field' && right.kind === 'field') {
      [left, right] = [right, left];
      op = ({ '==': '==', '!=': '!=', '<': '>', '<=': '>=', '>': '<', '>=': '<=' } as const)[op];
    }
    if (left.kind === 'field' && left.field.either) {
      const [x, y] = left.field.either.map((n) => this.field(n));
      const a = this.a;
      if (op === '!=') {
        // Wireshark: `ip.addr != X` holds when neither address is X.
        this.compare('!=', { ...left, field: x! }, right, no);
        this.compare('!=', { ...left, field: y! }, right, no);
      } else {
        const second = this.fresh('either');
        const yes = this.fresh('either_yes');
        this.compare(op, { ...left, field: x! }, right, second);
        a.ja(yes).label(second);
        this.compare(op, { ...left, field: y! }, right, no);
        a.label(yes);
      }
      return;
    }
    if (left.kind === 'field' && (left.field.width === 16 || left.field.width === 6)) {
      return this.compareBytes(op, left.field, right, no);
    }
    let l = this.expr(left, no);
    let rightExpr = right;
    if (right.kind === 'addr' && right.prefix !== undefined && right.family === 'ipv4') {
      const mask = right.prefix === 0 ? 0 : (0xffffffff << (32 - right.prefix)) >>> 0;
      l = this.maskReg(l, mask);
      rightExpr = { kind: 'num', value: (bytesToU32(right.bytes) & mask) >>> 0, span: right.span };
    }
    const negated: Record<typeof op, JmpOp> = { '==': 'jne', '!=': 'jeq', '<': 'jge', '<=': 'jgt', '>': 'jle', '>=': 'jlt' };
    this.jumpCmp(negated[op], l, rightExpr, no, no);
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
  private compareBytes(op: string, f: FieldDef, right: Expr, no: string): void {
    if (right.kind !== 'addr') {
      throw new CompileError(`rule "${this.rule?.name}": ${f.name} can only be compared with an address`);
    }
    if (op !== '==' && op !== '!=') {
      throw new CompileError(`rule "${this.rule?.name}": ${f.name} supports only == and !=`);
    }
    const a = this.a;
    const prefix = right.prefix ?? f.width * 8;
    const differ = op === '==' ? no : this.fresh('bytes_differ');
    const p = this.alloc();
    const w = this.alloc();
    this.fieldPointer(f, p, w, no);
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
      a.ldx(size, w, p, off);
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
    this.release(p, w);
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
  private expr(e: Expr, absent: string): Reg {
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
        return this.readField(e.field, absent);
      case 'arith': {
        const l = this.expr(e.left, absent);
        const k = constValue(e.right);
        const op = ARITH[e.op];
        if (k !== undefined && k >= 0 && k <= 0x7fffffff) {
          a.alu64(op, l, imm(k));
        } else {
          const r = this.expr(e.right, absent);
          a.alu64(op, l, r);
          this.release(r);
        }
        return l;
      }
      case 'call': {
        const [x, y] = e.args;
        const l = this.expr(x!, absent);
        const r = this.expr(y!, absent);
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

  /** p = pointer to the start of field f's container, checked to hold `width` bytes; w is a scratch. */
  private fieldPointer(f: FieldDef, p: Reg, w: Reg, absent: string, off = f.offset, width: number = f.width): void {
    const a = this.a;
    if (f.layer !== 'frame') {
      a.mov64(w, LAYERS).alu64('and', w, imm(LAYER_BIT[f.layer])).jmp('jeq', w, imm(0), absent);
    }
    this.loadBounds(p, w);
    const base = layerBase(f.layer);
    if ('fixed' in base) {
      if (base.fixed + off !== 0) a.alu64('add', p, imm(base.fixed + off));
    } else {
      a.alu64('add', p, base.reg);
      if (off !== 0) a.alu64('add', p, imm(off));
    }
    const end = this.alloc();
    a.mov64(end, p).alu64('add', end, imm(width)).jmp('jgt', end, w, absent);
    this.release(end);
  }

  /** Reads a numeric field (user-visible value) into a fresh register. */
  private readField(f: FieldDef, absent: string): Reg {
    const a = this.a;
    if (f.either) throw new CompileError(`rule "${this.rule?.name}": ${f.name} matches either of two fields and has no single value`);
    if (f.special === 'frame.len') {
      const r = this.alloc();
      if (this.kind === 'xdp') {
        a.ldx(8, r, FP, SLOT_FLEN);
      } else {
        a.ldx(4, r, CTXR, SKB.len);
      }
      return r;
    }
    if (f.width !== 1 && f.width !== 2 && f.width !== 4) {
      throw new CompileError(`rule "${this.rule?.name}": ${f.name} is ${f.width} bytes wide and can only be compared with an address`);
    }
    const r = this.alloc();
    const p = this.alloc();
    this.fieldPointer(f, p, r, absent);
    a.ldx(f.width, r, p, 0);
    this.release(p);
    if (f.width > 1) a.be(r, (f.width * 8) as 16 | 32);
    if (f.shift) a.alu64('rsh', r, imm(f.shift));
    if (f.mask !== fullMask(f.width)) this.maskReg(r, f.mask);
    if (f.scale !== 1) a.alu64('mul', r, imm(f.scale));
    return r;
  }

  // ---------------------------------------------------------------- actions

  /** Stores the value of a `set` into its stack slot (16 bytes: room for an IPv6 address). */
  private computeSet(s: Extract<Action, { kind: 'set' }>, slot: number, skip: string): void {
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
        const p = this.alloc();
        const w = this.alloc();
        this.fieldPointer(src.field, p, w, skip);
        for (let off = 0; off < f.width; off += 4) {
          const size = Math.min(4, f.width - off) as 2 | 4;
          a.ldx(size, w, p, off).stx(size, FP, slot + off, w);
        }
        this.release(p, w);
      } else {
        throw new CompileError(`rule "${this.rule?.name}": ${f.name} can only be set to an address or a field of the same kind`);
      }
      return;
    }
    const r = this.expr(s.value, skip);
    a.stx(8, FP, slot, r);
    this.release(r);
  }

  /** Writes one field from its stack slot and fixes the checksums that cover it. */
  private writeSet(s: Extract<Action, { kind: 'set' }>, slot: number, fixChecksums: boolean): void {
    const a = this.a;
    const f = s.field;
    const done = this.fresh('set_done');
    const covers = fixChecksums ? f.covers : [];
    if (f.width === 6 || f.width === 16) {
      // Whole-word writes; checksum deltas per 4-byte word (only IPv6 addresses are covered).
      for (let off = 0; off < f.width; off += 4) {
        const size = Math.min(4, f.width - off) as 2 | 4;
        this.writeWord(f, f.offset + off, size, slot + off, undefined, covers, done);
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
    this.writeWord(f, off, width, slot, { shift, mask: f.mask, scale: f.scale }, covers, done);
    a.label(done);
  }

  /**
   * Read-modify-write of `width` bytes at `off` in f's layer. With `bits`, the slot holds the
   * user-visible value, placed into the word; without, the slot holds the raw bytes to store.
   */
  private writeWord(
    f: FieldDef, off: number, width: 1 | 2 | 4, slot: number,
    bits: { shift: number; mask: number; scale: number } | undefined, covers: FieldDef['covers'], skip: string,
  ): void {
    const a = this.a;
    const OLD = SLOT_OLD;
    const NEW = SLOT_NEW;
    const p = this.alloc();
    const w = this.alloc();
    this.fieldPointer(f, p, w, skip, off, width);
    a.ldx(width, w, p, 0).stx(8, FP, OLD, w);
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
    a.stx(width, p, 0, w).stx(8, FP, NEW, w);
    this.release(p, w);
    if (width === 1) return; // a lone byte is never under a checksum (see writeSet)
    for (const cover of covers) {
      if (cover === 'ipv4-header') this.fixIpv4Header(OLD, NEW, width);
      else if (cover === 'l4') this.fixL4(false, f, OLD, NEW, width);
    }
    if (covers.includes('l4-pseudo')) {
      if (f.width === 1 && f.offset % 2 === 0) {
        // A protocol byte (ipv6.nxt) is the high byte of its header word but the low byte of
        // the pseudo-header's: move the old and new bytes there (raw words load little-endian).
        const t = this.alloc();
        for (const slot of [OLD, NEW]) {
          a.ldx(8, t, FP, slot).alu64('and', t, imm(0xff)).alu64('lsh', t, imm(8)).stx(8, FP, slot, t);
        }
        this.release(t);
      }
      this.fixL4(true, f, OLD, NEW, width);
    }
  }

  /** IPv4 header checksum, incrementally (RFC 1624), on raw words. */
  private fixIpv4Header(oldSlot: number, newSlot: number, width: 2 | 4): void {
    const skip = this.fresh('noip4');
    const a = this.a;
    const p = this.alloc();
    const w = this.alloc();
    a.mov64(w, LAYERS).alu64('and', w, imm(LAYER_BIT.ip)).jmp('jeq', w, imm(0), skip);
    this.fieldPointer({ ...IPV4_CSUM }, p, w, skip);
    this.inlineCsumUpdate(p, oldSlot, newSlot, width, false);
    this.release(p, w);
    a.label(skip);
  }

  /**
   * The L4 checksum after a change of `width` raw bytes: in the L4 header itself, or (pseudo)
   * in the addresses, protocol or length the pseudo-header repeats. At XDP it is computed
   * inline; at tc through bpf_l4_csum_replace, which also handles packets whose checksum the
   * kernel still owes (CHECKSUM_PARTIAL), where only pseudo-header changes may touch it.
   */
  private fixL4(pseudo: boolean, f: FieldDef, oldSlot: number, newSlot: number, width: 2 | 4): void {
    const a = this.a;
    const targets: Array<{ layer: 'tcp' | 'udp' | 'icmp' | 'icmpv6'; off: number }> = [];
    const l4Layers = ['tcp', 'udp', 'icmp', 'icmpv6'] as const;
    if (!pseudo) {
      if ((l4Layers as readonly string[]).includes(f.layer)) targets.push({ layer: f.layer as typeof l4Layers[number], off: L4_CSUM[f.layer as typeof l4Layers[number]] });
    } else if ((l4Layers as readonly string[]).includes(f.layer)) {
      // udp.length: UDP's pseudo-header repeats its own length field.
      targets.push({ layer: f.layer as typeof l4Layers[number], off: L4_CSUM[f.layer as typeof l4Layers[number]] });
    } else {
      targets.push({ layer: 'tcp', off: 16 });
      // UDP's pseudo-header carries the UDP length field, not the IP length (RFC 768, RFC 8200 8.1).
      if (!isL3Length(f)) targets.push({ layer: 'udp', off: 6 });
      if (f.layer === 'ipv6') targets.push({ layer: 'icmpv6', off: 2 });
    }
    for (const t of targets) {
      const skip = this.fresh(`no${t.layer}`);
      const p = this.alloc();
      const w = this.alloc();
      const csum: FieldDef = { ...IPV4_CSUM, name: `${t.layer}.checksum`, layer: t.layer, offset: t.off };
      a.mov64(w, LAYERS).alu64('and', w, imm(LAYER_BIT[t.layer])).jmp('jeq', w, imm(0), skip);
      if (pseudo && isIpv6NextHeader(f)) {
        // The pseudo-header names the upper-layer protocol, which ipv6.nxt is only when no
        // extension header follows the fixed header.
        a.mov64(w, L3).alu64('add', w, imm(40)).jmp('jne', w, L4, skip);
      }
      this.fieldPointer(csum, p, w, skip);
      const udp = t.layer === 'udp';
      if (this.kind === 'xdp') {
        this.inlineCsumUpdate(p, oldSlot, newSlot, width, udp);
        this.release(p, w);
      } else {
        this.release(p, w);
        // bpf_l4_csum_replace(skb, offset, from, to, flags)
        a.mov64(R1, CTXR).mov64(R2, L4).alu64('add', R2, imm(t.off));
        a.ldx(8, R3, FP, oldSlot).ldx(8, R4, FP, newSlot);
        a.movImm(R5, width | (pseudo ? BPF_F_PSEUDO_HDR : 0) | (udp ? BPF_F_MARK_MANGLED_0 : 0));
        a.call(HELPER.l4_csum_replace);
      }
      a.label(skip);
    }
  }

  /** *p (a 16-bit checksum) updated for raw old → new words; UDP keeps 0 as "no checksum". */
  private inlineCsumUpdate(p: Reg, oldSlot: number, newSlot: number, width: 2 | 4, udp: boolean): void {
    const a = this.a;
    const sum = this.alloc();
    const t = this.alloc();
    const done = this.fresh('csum_done');
    a.ldx(2, sum, p, 0);
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
    a.stx(2, p, 0, sum).label(done);
    this.release(sum, t);
  }
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

const IPV4_CSUM: FieldDef = {
  name: 'ip.checksum', layer: 'ip', offset: 10, width: 2, shift: 0, mask: 0xffff, scale: 1, kind: 'uint', max: 0xffff,
  writable: true, covers: [], description: '',
};

/** Where a layer starts: a fixed offset in the frame, or the offset held in r7 (L3) or r8 (L4). */
function layerBase(layer: FieldDef['layer']): { fixed: number } | { reg: Reg } {
  switch (layer) {
    case 'frame':
    case 'eth':
      return { fixed: 0 };
    case 'vlan':
      return { fixed: 14 };
    case 'ip':
    case 'ipv6':
      return { reg: L3 };
    default:
      return { reg: L4 };
  }
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
