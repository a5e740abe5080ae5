/**
 * BPF objects (ELF64, EM_BPF): writing compiled rules as objects the standard tools load,
 * reading clang's objects for `netmangle load`, and the C and assembly forms of a build.
 */
export { ElfWriter, StringTable, readElf, EM_BPF, R_BPF, SHF, SHT, STB, STT } from './elf.js';
export type { ElfFile, ElfRelocation, ElfSection, ElfSymbol, SectionOptions, SymbolHandle } from './elf.js';
export { Btf, BtfBuilder, KIND, parseBtf } from './btf.js';
export type { BtfType } from './btf.js';
export { buildObject, buildObjectFromGroups, sectionFor } from './build.js';
export type { BuildOptions, BuiltObject, BuiltProgram, SectionStyle } from './build.js';
export { parseObject, programTypeOf } from './object.js';
export type { BpfObject, LinkedProgram, ObjectMap, ObjectProgram } from './object.js';
export { chooseProgram, loadObjectProgram, readObjectFile } from './load.js';
export type { LoadedObjectProgram } from './load.js';
export { emitC } from './c.js';
export { objectListing } from './listing.js';
