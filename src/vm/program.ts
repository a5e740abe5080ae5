/**
 * Checking a program before it runs and resolving what the engines need: jump targets as
 * instruction indices, maps behind 64-bit immediate loads, the helpers it calls. Anything
 * the VM could not run is refused here, naming the instruction, so a run never starts on
 * a program that would fail for a reason known in advance.
 */
import * as O from '../bpf/opcodes.js';
import type { Insn } from '../bpf/insn.js';
import type { MapRef } from '../bpf/asm.js';
import { VmError } from './errors.js';
import { formatInsn } from '../bpf/disasm.js';
import { describeInsn } from './describe.js';
import { helperName } from './helper-names.js';
import { HELPERS } from './helpers.js';
import type { ProgramType } from './context.js';
import { PROGRAM_TYPES } from './context.js';
import { ArrayMap, type VmMap } from './maps.js';

/** Maps the program refers to: by name (for assembler map references) or by fd number. */
export type MapTable = ReadonlyMap<string | number, VmMap> | Readonly<Record<string, VmMap>>;

export interface ProgramOptions {
  programType: ProgramType;
  maps?: MapTable;
  /** The assembler's map references: LD_IMM64 at `index` means map `map` (by name in `maps`). */
  mapRefs?: readonly MapRef[];
}

export interface PreparedProgram {
  readonly type: ProgramType;
  readonly insns: readonly Insn[];
  /** Slot index of each instruction (what the kernel and error messages count). */
  readonly slotOf: Int32Array;
  /** Jump or local-call target of each instruction, as an instruction index; -1 if none. */
  readonly target: Int32Array;
  /** The maps used, in order of first use; pointers to a map carry its index here. */
  readonly maps: readonly VmMap[];
  /** For each LD_IMM64 of a map or map value: index into `maps`; -1 otherwise. */
  readonly mapIndexOf: Int32Array;
  /** For each LD_IMM64 of a map value: index of its static value region; -1 otherwise. */
  readonly staticValueOf: Int32Array;
  /** Static value regions (map values addressed directly), with their maps. */
  readonly staticValues: readonly { map: VmMap; bytes: Uint8Array }[];
  readonly hasLocalCalls: boolean;
}

/** "insn 12 (r1 = *(u32 *)(r6 + 76))": how errors name an instruction. */
export function insnLabel(prog: PreparedProgram, index: number): string {
  const insn = prog.insns[index];
  if (!insn) return `insn ${index}`;
  // The project's disassembler (llvm-objdump's text, decimal); ours for what objdump cannot decode.
  const text = formatInsn(insn, { hex: false });
  return `insn ${prog.slotOf[index]} (${text === '<unknown>' ? describeInsn(insn) : text})`;
}

function lookupMap(table: MapTable | undefined, key: string | number): VmMap | undefined {
  if (!table) return undefined;
  if (table instanceof Map) return table.get(key) ?? (typeof key === 'number' ? table.get(String(key)) : undefined);
  return (table as Record<string, VmMap>)[String(key)];
}

export function prepareProgram(insns: readonly Insn[], opts: ProgramOptions): PreparedProgram {
  const type = opts.programType;
  if (!PROGRAM_TYPES.includes(type)) throw new VmError(`the VM cannot run ${String(type)} programs (it runs ${PROGRAM_TYPES.join(', ')})`);
  const n = insns.length;
  if (n === 0) throw new VmError('the program has no instructions');
  const slotOf = new Int32Array(n + 1);
  const insnAtSlot = new Map<number, number>();
  let slot = 0;
  for (let i = 0; i < n; i++) {
    slotOf[i] = slot;
    insnAtSlot.set(slot, i);
    slot += insns[i]!.code === O.LD_IMM64 ? 2 : 1;
  }
  slotOf[n] = slot;
  const target = new Int32Array(n).fill(-1);
  const mapIndexOf = new Int32Array(n).fill(-1);
  const staticValueOf = new Int32Array(n).fill(-1);
  const maps: VmMap[] = [];
  const staticValues: { map: VmMap; bytes: Uint8Array }[] = [];
  const refByIndex = new Map<number, MapRef>();
  for (const r of opts.mapRefs ?? []) refByIndex.set(r.index, r);
  let hasLocalCalls = false;

  const partial = { type, insns, slotOf } as unknown as PreparedProgram;
  const refuse = (i: number, why: string): never => {
    throw new VmError(`${insnLabel(partial, i)}: ${why}`, slotOf[i]);
  };
  const resolveSlot = (i: number, rel: number): number => {
    const s = slotOf[i]! + 1 + rel;
    const t = insnAtSlot.get(s);
    if (t === undefined) refuse(i, s === slot ? 'jumps past the last instruction' : s < 0 || s > slot ? `jumps to slot ${s}, outside the program` : 'jumps into the middle of a 64-bit immediate load');
    return t!;
  };
  const checkReg = (i: number, r: number, write: boolean): void => {
    if (r > 10) refuse(i, `uses register r${r}; eBPF has r0 to r10`);
    if (write && r === 10) refuse(i, 'writes r10, the read-only frame pointer');
  };

  for (let i = 0; i < n; i++) {
    const insn = insns[i]!;
    const c = O.cls(insn.code);
    switch (c) {
      case O.BPF_ALU:
      case O.BPF_ALU64: {
        const op = O.op(insn.code);
        checkReg(i, insn.dst, true);
        if (O.src(insn.code) === O.BPF_X && op !== O.BPF_END && op !== O.BPF_NEG) checkReg(i, insn.src, false);
        if (op > O.BPF_END) refuse(i, `has an unknown ALU operation ${O.op(insn.code).toString(16)}`);
        if (op === O.BPF_END) {
          if (insn.imm !== 16 && insn.imm !== 32 && insn.imm !== 64) refuse(i, `byte swap of ${insn.imm} bits; only 16, 32 and 64 exist`);
          if (c === O.BPF_ALU64 && O.src(insn.code) !== 0) refuse(i, 'is not a valid byte swap encoding');
        }
        if ((op === O.BPF_DIV || op === O.BPF_MOD) && insn.off !== 0 && insn.off !== 1) refuse(i, `has offset ${insn.off}; division takes 0 (unsigned) or 1 (signed)`);
        if (op === O.BPF_MOV && O.src(insn.code) === O.BPF_X && insn.off !== 0) {
          const ok = c === O.BPF_ALU64 ? [8, 16, 32] : [8, 16];
          if (!ok.includes(insn.off)) refuse(i, `sign-extending move of ${insn.off} bits is not defined`);
        }
        break;
      }
      case O.BPF_LDX: {
        const m = O.mode(insn.code);
        if (m !== O.BPF_MEM && m !== O.BPF_MEMSX) refuse(i, 'has an unknown load mode');
        if (m === O.BPF_MEMSX && O.size(insn.code) === O.BPF_DW) refuse(i, 'sign-extending 64-bit load is not defined');
        checkReg(i, insn.dst, true);
        checkReg(i, insn.src, false);
        break;
      }
      case O.BPF_ST:
        if (O.mode(insn.code) !== O.BPF_MEM) refuse(i, 'has an unknown store mode');
        checkReg(i, insn.dst, false);
        break;
      case O.BPF_STX: {
        const m = O.mode(insn.code);
        checkReg(i, insn.dst, false);
        checkReg(i, insn.src, false);
        if (m === O.BPF_ATOMIC) {
          const sz = O.size(insn.code);
          if (sz !== O.BPF_W && sz !== O.BPF_DW) refuse(i, 'atomic operations are 32 or 64 bits wide');
          const known = [O.BPF_ADD, O.BPF_OR, O.BPF_AND, O.BPF_XOR].flatMap((o) => [o, o | O.BPF_FETCH]).concat([O.BPF_XCHG, O.BPF_CMPXCHG]);
          if (!known.includes(insn.imm)) refuse(i, `unknown atomic operation ${insn.imm}`);
        } else if (m !== O.BPF_MEM) refuse(i, 'has an unknown store mode');
        break;
      }
      case O.BPF_LD: {
        if (insn.code !== O.LD_IMM64) refuse(i, 'legacy packet loads (LD_ABS, LD_IND) are not supported by the VM; use direct packet access');
        checkReg(i, insn.dst, true);
        const s = insn.src;
        if (s === 0) break;
        if (s !== O.BPF_PSEUDO_MAP_FD && s !== O.BPF_PSEUDO_MAP_IDX && s !== O.BPF_PSEUDO_MAP_VALUE && s !== O.BPF_PSEUDO_MAP_IDX_VALUE) {
          refuse(i, `64-bit immediate of kind ${s} (BTF ids, functions) is not supported by the VM`);
        }
        const ref = refByIndex.get(i);
        const key: string | number = ref ? ref.map : insn.imm;
        const map = lookupMap(opts.maps, key);
        if (!map) refuse(i, `refers to map ${typeof key === 'string' ? `"${key}"` : `fd ${key}`}, which is not in the VM's map table`);
        let mi = maps.indexOf(map!);
        if (mi < 0) mi = maps.push(map!) - 1;
        mapIndexOf[i] = mi;
        if (s === O.BPF_PSEUDO_MAP_VALUE || s === O.BPF_PSEUDO_MAP_IDX_VALUE) {
          if (!(map instanceof ArrayMap) || map.type !== 'array') refuse(i, `direct value access needs an array map; map ${map!.name} is ${map!.type}`);
          const off = ref ? ref.offset : insn.imm2 ?? 0;
          if (off < 0 || off >= map!.valueSize) refuse(i, `value offset ${off} is outside map ${map!.name}'s ${map!.valueSize}-byte value`);
          staticValueOf[i] = staticValues.push({ map: map!, bytes: (map as ArrayMap).valueAt(0, 0) }) - 1;
        }
        break;
      }
      case O.BPF_JMP:
      case O.BPF_JMP32: {
        const op = O.op(insn.code);
        if (op === O.BPF_EXIT) {
          if (c !== O.BPF_JMP) refuse(i, 'is not a valid exit encoding');
          break;
        }
        if (op === O.BPF_CALL) {
          if (c !== O.BPF_JMP) refuse(i, 'is not a valid call encoding');
          if (insn.src === O.BPF_PSEUDO_CALL) {
            target[i] = resolveSlot(i, insn.imm);
            hasLocalCalls = true;
            break;
          }
          if (insn.src !== 0) refuse(i, 'calls a kernel function (kfunc), which the VM does not have');
          const h = HELPERS[insn.imm];
          if (!h) refuse(i, `calls ${helperName(insn.imm)}, which the VM does not implement`);
          if (!h!.types.includes(type)) refuse(i, `calls ${helperName(insn.imm)}, which ${type} programs may not use`);
          break;
        }
        if (op === O.BPF_JA) {
          target[i] = resolveSlot(i, c === O.BPF_JMP32 ? insn.imm : insn.off);
          break;
        }
        if (op > O.BPF_JSLE) refuse(i, 'has an unknown jump operation');
        checkReg(i, insn.dst, false);
        if (O.src(insn.code) === O.BPF_X) checkReg(i, insn.src, false);
        target[i] = resolveSlot(i, insn.off);
        break;
      }
      default:
        refuse(i, 'has an unknown instruction class');
    }
  }
  const last = insns[n - 1]!;
  const lastOp = O.op(last.code);
  if (!(O.cls(last.code) === O.BPF_JMP || O.cls(last.code) === O.BPF_JMP32) || (lastOp !== O.BPF_EXIT && lastOp !== O.BPF_JA)) {
    refuse(n - 1, 'is the last instruction and is neither exit nor a jump: the program would run off its end');
  }
  return { type, insns, slotOf, target, maps, mapIndexOf, staticValueOf, staticValues, hasLocalCalls };
}
