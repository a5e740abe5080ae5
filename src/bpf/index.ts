export * from './opcodes.js';
export * from './insn.js';
export * from './asm.js';
