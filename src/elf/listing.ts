/**
 * `netmangle build --emit asm`: each program of an object as llvm-objdump would print it
 * (same instruction text, slot numbers), headed by its section, symbol and rules, with the
 * map each 64-bit load refers to noted after it.
 */
import { disassemble } from '../bpf/disasm.js';
import { LD_IMM64 } from '../bpf/opcodes.js';
import { SEED_GLOBAL, SEED_SECTION } from '../compiler/index.js';
import type { BuiltObject } from './build.js';

export function objectListing(built: BuiltObject): string {
  const out: string[] = [];
  for (const p of built.programs) {
    const c = p.compiled;
    out.push(`; section ${p.section}, program ${p.symbol} (${c.hook}${p.dev !== 'any' ? ` on ${p.dev}` : ''}), seed ${built.seed}`);
    for (const r of c.rules) out.push(`;   rule ${r.name}: ${r.text}`);
    out.push('', `0000000000000000 <${p.symbol}>:`);
    // As the object holds them: map loads carry no fd yet, only an offset (llvm-objdump shows `r1 = 0x0 ll`).
    const asInObject = c.insns.map((insn, i) => {
      const ref = c.mapRefs.find((r) => r.index === i);
      return ref ? { ...insn, src: 0, imm: ref.kind === 'value' ? ref.offset : 0, imm2: 0 } : insn;
    });
    const text = disassemble(asInObject, { hex: true });
    const notes = new Map<number, string>();
    for (const ref of c.mapRefs) {
      const map = ref.map === SEED_SECTION ? `${SEED_GLOBAL} (${SEED_SECTION})` : p.maps[ref.map] ?? ref.map;
      notes.set(ref.index, ref.kind === 'value' ? `address of ${map}${ref.offset ? ` + ${ref.offset}` : ''}` : `map ${map}`);
    }
    let slot = 0;
    c.insns.forEach((insn, i) => {
      const note = notes.get(i);
      out.push(`${String(slot).padStart(8)}:\t${text[i]}${note ? `\t; ${note}` : ''}`);
      slot += insn.code === LD_IMM64 ? 2 : 1;
    });
    out.push('');
  }
  return out.join('\n');
}
