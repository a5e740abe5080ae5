export * from './opcodes.js';
export * from './insn.js';
export * from './asm.js';
export * from './disasm.js';
export * from './helpers.js';
