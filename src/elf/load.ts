/**
 * One program of a BPF object into the kernel: its maps created (global data written, `.rodata`
 * frozen), the program loaded with them. Maps live exactly as long as the LoadedObjectProgram.
 */
import { readFileSync } from 'node:fs';
import { fsUsageError, UsageError } from '../errors.js';
import { createMap, loadProgram, type BpfMap, type Program } from '../kernel/index.js';
import { Attr, bpfCall } from '../kernel/sys.js';
import { parseObject, type BpfObject, type LinkedProgram } from './object.js';

/** BPF_MAP_FREEZE: user space may no longer write the map (not in kernel/sys.ts's Cmd table). */
const BPF_MAP_FREEZE = 22;

export interface LoadedObjectProgram extends Disposable {
  object: BpfObject;
  linked: LinkedProgram;
  prog: Program;
  maps: Record<string, BpfMap>;
  close(): void;
}

export function readObjectFile(path: string): BpfObject {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw fsUsageError(err, `read ${path}`);
  }
  return parseObject(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), path);
}

/**
 * Chooses a program of `object`: by section name or function name when `select` is given,
 * otherwise the only program whose type fits `wantType`.
 */
export function chooseProgram(object: BpfObject, opts: { select?: string; wantType?: 'xdp' | 'sched_cls' }): string {
  const list = object.programs.map((p) => `${p.name} (section ${p.section})`).join(', ') || 'none';
  if (opts.select !== undefined) {
    const byName = object.programs.filter((p) => p.name === opts.select);
    const bySection = object.programs.filter((p) => p.section === opts.select);
    const found = byName.length > 0 ? byName : bySection;
    if (found.length === 0) throw new UsageError(`${object.file} has no section or program named ${opts.select}`, { hint: `its programs: ${list}` });
    if (found.length > 1) throw new UsageError(`${object.file}: section ${opts.select} holds ${found.length} programs`, { hint: `name one of them: ${found.map((p) => p.name).join(', ')}` });
    return found[0]!.name;
  }
  const fitting = object.programs.filter((p) => opts.wantType === undefined || p.type === opts.wantType);
  if (fitting.length === 1) return fitting[0]!.name;
  if (fitting.length === 0) throw new UsageError(`${object.file} has no ${opts.wantType ?? ''} program`.replace('  ', ' '), { hint: `its programs: ${list}` });
  throw new UsageError(`${object.file} has ${fitting.length} programs that fit; choose one with --section`, { hint: `its programs: ${list}` });
}

/** Creates the maps `name` uses and loads it. */
export function loadObjectProgram(object: BpfObject, name: string): LoadedObjectProgram {
  const linked = object.link(name);
  const maps: Record<string, BpfMap> = {};
  const closeMaps = () => {
    for (const m of Object.values(maps)) m.close();
  };
  try {
    for (const mapName of linked.usesMaps) {
      const spec = object.maps.get(mapName)!;
      const map = createMap({ type: spec.type, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries, flags: spec.flags, name: mapName });
      maps[mapName] = map;
      if (spec.initial) map.update(Buffer.alloc(4), spec.initial);
      if (spec.freeze) bpfCall(BPF_MAP_FREEZE, new Attr().u32(0, map.fd), 'freeze', `map ${mapName}`);
    }
    const prog = loadProgram({
      type: linked.type,
      insns: linked.insns,
      maps,
      mapRefs: linked.mapRefs,
      license: object.license,
      name: linked.name,
      flags: linked.flags,
    });
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      prog.close();
      closeMaps();
    };
    return { object, linked, prog, maps, close, [Symbol.dispose]: close };
  } catch (err) {
    closeMaps();
    throw err;
  }
}
