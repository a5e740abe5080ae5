/**
 * netmangle's interface to the kernel's BPF subsystem. Programs, maps and links are objects
 * owning a file descriptor: close() (or `using`) releases it, and a link's program stays
 * attached exactly as long as the link is open or pinned.
 */
import { getPinned } from './bpffs.js';
import { closeFd } from './fd.js';
import { Link } from './link.js';
import { BpfMap } from './map.js';
import { Program } from './program.js';
import { NetmangleError } from '../errors.js';

export { BpfError, ATTACH_TYPES, LINK_TYPES, MAP_TYPES, PROG_TYPES, Flags, errnoName } from './sys.js';
export type { AttachType, LinkType, MapType, ProgramType } from './sys.js';
export { possibleCpus, sanitizeObjectName, closeFd } from './fd.js';
export { BpfMap, createMap } from './map.js';
export type { CreateMapOptions, UpdateFlag } from './map.js';
export { Program, VerifierError, loadProgram, testRun, verifierLimit, type VerifierLimit } from './program.js';
export type { LoadProgramOptions, TestRunOptions, TestRunResult } from './program.js';
export { Link, createTcxLink, createXdpLink, detachLink, tryDetachLink, updateLink } from './link.js';
export type { TcxLinkOptions, XdpLinkOptions } from './link.js';
export { BPFFS_ROOT, NETMANGLE_PIN_ROOT, ensureBpffs, fdKind, getPinned, pinDir, pinObject } from './bpffs.js';
export type { PinnedKind, PinnedObject } from './bpffs.js';
export {
  enableStats, linkFdById, linkInfo, linkInfoByFd, listLinks, listMaps, listPrograms, mapFdById, mapInfo, mapInfoByFd,
  programFdById, programInfo, programInfoByFd, queryProgs,
} from './info.js';
export type { LinkInfo, MapInfo, ObjectRef, ProgramInfo, QueryResult } from './info.js';
export { NotPrivilegedError, probeFeatures } from './probe.js';
export type { ProbeFeatures, ProbeResult } from './probe.js';

function openPinnedAs<T>(path: string, kind: 'program' | 'map' | 'link', wrap: (fd: number) => T): T {
  const pinned = getPinned(path);
  if (pinned.kind !== kind) {
    closeFd(pinned.fd);
    throw new NetmangleError(`${path} holds a ${pinned.kind}, not a ${kind}`);
  }
  try {
    return wrap(pinned.fd);
  } catch (err) {
    closeFd(pinned.fd);
    throw err;
  }
}

/** Opens a program pinned at `path`. */
export function openPinnedProgram(path: string): Program {
  return openPinnedAs(path, 'program', (fd) => Program.fromFd(fd));
}

/** Opens a map pinned at `path`. */
export function openPinnedMap(path: string): BpfMap {
  return openPinnedAs(path, 'map', (fd) => BpfMap.fromFd(fd));
}

/** Opens a link pinned at `path`. */
export function openPinnedLink(path: string): Link {
  return openPinnedAs(path, 'link', (fd) => Link.fromFd(fd));
}
