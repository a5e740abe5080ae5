/**
 * What a netlink attachment is, said precisely enough that another process can find it and
 * remove exactly it after its owner died: a cls_bpf filter (or an IFLA_XDP program) outlives the
 * process that attached it, unlike a BPF link.
 *
 * Removal checks the program on the hook first, so a filter or XDP program someone else put
 * there (or put back) is never touched: the cls_bpf filter at the recorded priority and handle
 * must still run the recorded program id (and tag); at XDP the kernel itself compares
 * (XDP_FLAGS_REPLACE with the expected program). The clsact qdisc goes only when netmangle added
 * it and no filter of any kind is left on either of its directions.
 */
import { inNetns, listNetns } from './netns.js';
import { closeFd } from './fd.js';
import { programFdById } from './info.js';
import { netnsInode } from './process.js';
import {
  delClsBpfFilter, detachXdpNetlinkIf, getLink, listClsBpfFilters, listTcFilters, removeClsact, type XdpMode,
} from './rtnetlink.js';

export type HoldHook = 'xdp' | 'ingress' | 'egress';

export interface NetlinkHold {
  /** The namespace as `ip netns` named it (undefined: the attaching process's own). */
  netns?: string;
  /**
   * Its inode, which usually tells it from another namespace given the same name later (6.1
   * reuses freed inode numbers, so the program id check, not this, keeps removal exact).
   */
  netnsInode?: number;
  dev: string;
  ifindex: number;
  hook: HoldHook;
  progId: number;
  /** The kernel's tag of the program (16 hex digits). */
  progTag: string;
  progName: string;
  /** tc: where the cls_bpf filter sits. */
  tcFilter?: { prio: number; handle: number };
  /** xdp: the mode it was attached in. */
  xdpMode?: XdpMode;
  /** tc: whether netmangle added the clsact qdisc for it. */
  clsactAdded: boolean;
  /** False while the kernel call is under way: a crash then may or may not have left it. */
  attached: boolean;
}

/** Told about a netlink attachment before and after each step, and when it is gone. */
export interface NetlinkOwner {
  /** Called before anything else, outside any namespace switch (e.g. to start a process). */
  prepare?(): void;
  record(hold: NetlinkHold): void;
  forget(): void;
}

/**
 * Runs `fn` in the namespace the hold is in, found by inode: by its recorded name if that
 * still names it, else by any name `ip netns` has for it, else the current namespace if it is
 * that one. Undefined when no name reaches it (deleted, or unnamed and not ours).
 */
function inHoldNetns<T>(hold: NetlinkHold, fn: () => T): { reached: true; value: T } | { reached: false } {
  const candidates: Array<string | undefined> = [];
  if (hold.netns !== undefined) candidates.push(hold.netns);
  candidates.push(undefined);
  for (const name of listNetns()) if (name !== hold.netns) candidates.push(name);
  for (const name of candidates) {
    const ino = netnsInode(name);
    if (ino === undefined) continue;
    if (hold.netnsInode !== undefined ? ino !== hold.netnsInode : name !== hold.netns) continue;
    return { reached: true, value: inNetns(name, fn) };
  }
  return { reached: false };
}

/** Where the hold's program is right now: on its hook, gone, or out of reach. */
export type HoldState = 'attached' | 'gone' | 'unreachable';

function onHook(hold: NetlinkHold): boolean {
  const link = getLink(hold.ifindex);
  if (!link) return false;
  if (hold.hook === 'xdp') return link.xdp.drvProgId === hold.progId || link.xdp.skbProgId === hold.progId;
  return ownFilter(hold) !== undefined;
}

function ownFilter(hold: NetlinkHold): { prio: number; handle: number } | undefined {
  if (!hold.tcFilter || hold.hook === 'xdp') return undefined;
  const ref = hold.tcFilter;
  return listClsBpfFilters(hold.ifindex, hold.hook)
    .find((f) => f.prio === ref.prio && f.handle === ref.handle && f.progId === hold.progId && (!f.tag || !hold.progTag || f.tag === hold.progTag));
}

/** Whether the hold's program is still on its hook. */
export function holdState(hold: NetlinkHold): HoldState {
  const r = inHoldNetns(hold, () => onHook(hold));
  if (r.reached) return r.value ? 'attached' : 'gone';
  // Out of reach: attached somewhere only while the program still exists (a hook holds it).
  const fd = openProgram(hold.progId);
  if (fd === undefined) return 'gone';
  closeFd(fd);
  return 'unreachable';
}

export interface HoldRemoval {
  /** The program was on the hook and is not any more. */
  removed: boolean;
  clsactRemoved: boolean;
  state: HoldState;
}

/** Removes the hold's program from its hook if it is still there, and a clsact qdisc only netmangle used. */
export function removeHold(hold: NetlinkHold): HoldRemoval {
  const r = inHoldNetns(hold, (): HoldRemoval => {
    if (!getLink(hold.ifindex)) return { removed: false, clsactRemoved: false, state: 'gone' };
    let removed = false;
    if (hold.hook === 'xdp') {
      const fd = openProgram(hold.progId);
      if (fd !== undefined) {
        try {
          const modes: XdpMode[] = hold.xdpMode === 'skb' ? ['skb', 'drv'] : ['drv', 'skb'];
          for (const mode of modes) if (detachXdpNetlinkIf(hold.ifindex, fd, mode)) removed = true;
        } finally {
          closeFd(fd);
        }
      }
      return { removed, clsactRemoved: false, state: 'gone' };
    }
    const own = ownFilter(hold);
    if (own) removed = delClsBpfFilter(hold.ifindex, hold.hook, own);
    let clsactRemoved = false;
    if (hold.clsactAdded && listTcFilters(hold.ifindex, 'ingress').length === 0 && listTcFilters(hold.ifindex, 'egress').length === 0) {
      clsactRemoved = removeClsact(hold.ifindex);
    }
    return { removed, clsactRemoved, state: 'gone' };
  });
  if (!r.reached) return { removed: false, clsactRemoved: false, state: holdState(hold) };
  return r.value;
}

/** An fd of program `id`, or undefined when it no longer exists (nothing holds it any more). */
function openProgram(id: number): number | undefined {
  try {
    return programFdById(id);
  } catch {
    return undefined;
  }
}
