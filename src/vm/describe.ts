/**
 * One instruction as text, in the notation of the kernel verifier's log and `llvm-objdump -d`
 * (`r1 = *(u32 *)(r6 + 76)`, `if w1 s> 5 goto +3`), for the VM's error messages.
 */
import * as O from '../bpf/opcodes.js';
import type { Insn } from '../bpf/insn.js';
import { helperName } from './helper-names.js';

const ALU_SYM: Record<number, string> = {
  [O.BPF_ADD]: '+=', [O.BPF_SUB]: '-=', [O.BPF_MUL]: '*=', [O.BPF_DIV]: '/=', [O.BPF_OR]: '|=',
  [O.BPF_AND]: '&=', [O.BPF_LSH]: '<<=', [O.BPF_RSH]: '>>=', [O.BPF_MOD]: '%=', [O.BPF_XOR]: '^=',
  [O.BPF_MOV]: '=', [O.BPF_ARSH]: 's>>=',
};
const JMP_SYM: Record<number, string> = {
  [O.BPF_JEQ]: '==', [O.BPF_JGT]: '>', [O.BPF_JGE]: '>=', [O.BPF_JSET]: '&', [O.BPF_JNE]: '!=',
  [O.BPF_JSGT]: 's>', [O.BPF_JSGE]: 's>=', [O.BPF_JLT]: '<', [O.BPF_JLE]: '<=', [O.BPF_JSLT]: 's<',
  [O.BPF_JSLE]: 's<=',
};
const SIZE_NAME: Record<number, string> = { [O.BPF_B]: 'u8', [O.BPF_H]: 'u16', [O.BPF_W]: 'u32', [O.BPF_DW]: 'u64' };

const signed16 = (n: number): string => (n >= 0 ? `+${n}` : `${n}`);
const addr = (reg: number, off: number): string => `r${reg} ${off < 0 ? '-' : '+'} ${Math.abs(off)}`;
const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;

export function describeInsn(i: Insn): string {
  const c = O.cls(i.code);
  const sz = O.size(i.code);
  switch (c) {
    case O.BPF_ALU:
    case O.BPF_ALU64: {
      const r = c === O.BPF_ALU64 ? 'r' : 'w';
      const op = O.op(i.code);
      const srcText = O.src(i.code) === O.BPF_X ? `${r}${i.src}` : `${i.imm}`;
      if (op === O.BPF_NEG) return `${r}${i.dst} = -${r}${i.dst}`;
      if (op === O.BPF_END) {
        const kind = c === O.BPF_ALU64 ? 'bswap' : O.src(i.code) === O.BPF_TO_BE ? 'be' : 'le';
        return `r${i.dst} = ${kind}${i.imm} r${i.dst}`;
      }
      if (op === O.BPF_MOV && O.src(i.code) === O.BPF_X && i.off !== 0) return `${r}${i.dst} = (s${i.off})${r}${i.src}`;
      const sym = ALU_SYM[op];
      if (sym === undefined) return `unknown ALU opcode ${hex(i.code)}`;
      const s = (op === O.BPF_DIV || op === O.BPF_MOD) && i.off === 1 ? `s${sym}` : sym;
      return `${r}${i.dst} ${s} ${srcText}`;
    }
    case O.BPF_LDX: {
      const sx = O.mode(i.code) === O.BPF_MEMSX;
      const name = (SIZE_NAME[sz] ?? '?').replace('u', sx ? 's' : 'u');
      return `r${i.dst} = *(${name} *)(${addr(i.src, i.off)})`;
    }
    case O.BPF_ST:
      return `*(${SIZE_NAME[sz]} *)(${addr(i.dst, i.off)}) = ${i.imm}`;
    case O.BPF_STX: {
      if (O.mode(i.code) === O.BPF_ATOMIC) {
        const target = `*(${SIZE_NAME[sz]} *)(${addr(i.dst, i.off)})`;
        const r = sz === O.BPF_DW ? 'r' : 'w';
        if (i.imm === O.BPF_XCHG) return `${r}${i.src} = xchg(${target}, ${r}${i.src})`;
        if (i.imm === O.BPF_CMPXCHG) return `${r}0 = cmpxchg(${target}, ${r}0, ${r}${i.src})`;
        const sym = ALU_SYM[i.imm & 0xf0] ?? '?=';
        if (i.imm & O.BPF_FETCH) return `${r}${i.src} = atomic_fetch_${sym}(${target}, ${r}${i.src})`;
        return `lock ${target} ${sym} ${r}${i.src}`;
      }
      return `*(${SIZE_NAME[sz]} *)(${addr(i.dst, i.off)}) = r${i.src}`;
    }
    case O.BPF_LD: {
      if (i.code === O.LD_IMM64) {
        if (i.src === O.BPF_PSEUDO_MAP_FD || i.src === O.BPF_PSEUDO_MAP_IDX) return `r${i.dst} = map[id:${i.imm}] ll`;
        if (i.src === O.BPF_PSEUDO_MAP_VALUE || i.src === O.BPF_PSEUDO_MAP_IDX_VALUE) return `r${i.dst} = map[id:${i.imm}][${i.imm2 ?? 0}] ll`;
        const v = (BigInt(i.imm2 ?? 0) << 32n) | BigInt(i.imm >>> 0);
        return `r${i.dst} = 0x${BigInt.asUintN(64, v).toString(16)} ll`;
      }
      const m = O.mode(i.code);
      if (m === O.BPF_ABS) return `r0 = *(${SIZE_NAME[sz]} *)skb[${i.imm}]`;
      if (m === O.BPF_IND) return `r0 = *(${SIZE_NAME[sz]} *)skb[r${i.src} + ${i.imm}]`;
      return `unknown load opcode ${hex(i.code)}`;
    }
    case O.BPF_JMP:
    case O.BPF_JMP32: {
      const op = O.op(i.code);
      if (op === O.BPF_JA) return `goto ${signed16(c === O.BPF_JMP32 ? i.imm : i.off)}`;
      if (op === O.BPF_EXIT) return 'exit';
      if (op === O.BPF_CALL) {
        if (i.src === O.BPF_PSEUDO_CALL) return `call pc${signed16(i.imm)}`;
        return `call ${helperName(i.imm)}#${i.imm}`;
      }
      const sym = JMP_SYM[op];
      if (sym === undefined) return `unknown jump opcode ${hex(i.code)}`;
      const r = c === O.BPF_JMP ? 'r' : 'w';
      const srcText = O.src(i.code) === O.BPF_X ? `${r}${i.src}` : `${i.imm}`;
      return `if ${r}${i.dst} ${sym} ${srcText} goto ${signed16(i.off)}`;
    }
    default:
      return `unknown opcode ${hex(i.code)}`;
  }
}
