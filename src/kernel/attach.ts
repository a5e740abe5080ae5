/**
 * One way in for attaching a loaded program to an interface hook, whatever the kernel offers:
 *
 *   hook     path 'link' / 'tcx' (BPF links)          path 'netlink' (older kernels)
 *   xdp      XDP link, 5.9+                            IFLA_XDP through RTM_SETLINK
 *   ingress  tcx link, 6.6+                            clsact qdisc + cls_bpf direct-action filter
 *   egress   tcx link, 6.6+                            clsact qdisc + cls_bpf direct-action filter
 *
 * A link detaches by itself when the process dies; a netlink attachment stays until someone
 * removes it. So a netlink attachment tells its `owner` (see netlink-hold.ts) what it is,
 * before each kernel step, for a process that outlives this one to remove it after a crash
 * (src/live/guardian.ts); one made without an owner carries a `warning` instead.
 *
 * Every kernel call runs inside `inNetns(netns)`, so the interface is found (and the program
 * attached) in that namespace.
 */
import { HookBusyError, NetmangleError, UsageError } from '../errors.js';
import { programInfo, programInfoByFd, queryProgs } from './info.js';
import { createTcxLink, createXdpLink, tryDetachLink, updateLink, type Link } from './link.js';
import { inNetns, ipCommand, netnsExists, requireNetns } from './netns.js';
import { NetlinkError } from './netlink.js';
import type { NetlinkHold, NetlinkOwner } from './netlink-hold.js';
import { netnsInode } from './process.js';
import { probeFeaturesCached, type ProbeResult } from './probe.js';
import type { Program } from './program.js';
import {
  addClsBpfFilter, attachXdpNetlink, delClsBpfFilter, ensureClsact, getLink, listClsBpfFilters, listTcFilters, noInterface, removeClsact,
  detachXdpNetlink, xdpQueryNetlink, type ClsBpfFilterRef, type LinkInfo, type TcDirection, type XdpMode, type XdpState,
} from './rtnetlink.js';
import { BpfError, EBUSY, EEXIST, EINVAL, EOPNOTSUPP, ENOTSUPP } from './sys.js';

export type Hook = 'xdp' | 'ingress' | 'egress';
export type AttachPath = 'link' | 'tcx' | 'netlink';

export interface AttachOptions {
  /** Interface name, as `ip link` shows it inside `netns`. */
  dev: string;
  hook: Hook;
  /** Network namespace: an `ip netns` name or a path (`/proc/PID/ns/net`); default: the current one. */
  netns?: string;
  /**
   * 'auto' (default): BPF links where this kernel has them (probed once), else netlink.
   * 'link' and 'tcx' both mean "a BPF link" (an XDP link at xdp, a tcx link at ingress/egress).
   */
  path?: 'auto' | AttachPath;
  /** XDP only. 'auto' (default): native (driver) mode, falling back to generic (skb) mode. */
  xdpMode?: 'skb' | 'drv' | 'auto';
  /**
   * netlink tc path only: the cls_bpf filter's priority and handle (default 1). Without a
   * priority the filter goes after every filter already at that direction (the highest
   * priority there plus one; 1 on an empty hook), so it never runs ahead of filters that were
   * there first unless asked to. tcx has no priorities (a new program goes last): refused there.
   */
  tcPriority?: number;
  tcHandle?: number;
  /**
   * Told what a netlink attachment is before each kernel step and once it is done, and when it
   * is detached: so that something outliving this process can remove it after a crash.
   */
  owner?: NetlinkOwner;
}

export interface Attachment extends Disposable {
  readonly dev: string;
  readonly ifindex: number;
  readonly hook: Hook;
  readonly netns: string | undefined;
  readonly path: AttachPath;
  /** The attached program's kernel id. */
  readonly progId: number;
  /** XDP only: the mode the program ended up in. */
  readonly xdpMode?: XdpMode;
  /** The BPF link holding the program (paths 'link' and 'tcx'). */
  readonly link?: Link;
  /** netlink tc path: where the cls_bpf filter sits. */
  readonly tcFilter?: ClsBpfFilterRef;
  /** Set for netlink attachments without an owner: they outlive a crash of this process. */
  readonly warning?: string;
  readonly detached: boolean;
  /** Removes the program from the hook (and a clsact qdisc this attachment added). Idempotent. */
  detach(): void;
  /**
   * Leaves the program attached past this process's exit on purpose (a pinned set): its owner
   * forgets it, so nothing removes it when this process dies.
   */
  disown(): void;
  /**
   * Link paths only: puts `prog` on the hook in place of `current` (the attached program) in one
   * step, so no packet passes unseen in between. Throws for netlink attachments.
   */
  replace(prog: Program, current: Program): void;
}

let probed: ProbeResult | undefined;

/** probeFeatures(), run once per process. */
function features(): ProbeResult {
  probed ??= probeFeaturesCached();
  return probed;
}

/** For tests: forget the probe result so the next attach probes again. */
export function resetAttachProbe(): void {
  probed = undefined;
}

function isBusy(err: unknown): boolean {
  return (err instanceof BpfError || err instanceof NetlinkError) && (err.errno === EBUSY || err.errno === EEXIST);
}

function lacksNativeMode(err: unknown): boolean {
  return (err instanceof BpfError || err instanceof NetlinkError)
    && (err.errno === EOPNOTSUPP || err.errno === EINVAL || err.errno === ENOTSUPP);
}

/** "id 42 'mangle'" (the name when we may read it). */
function describeProgram(id: number): string {
  try {
    const info = programInfo(id);
    return info.name ? `id ${id} '${info.name}'` : `id ${id}`;
  } catch {
    return `id ${id}`;
  }
}

function where(dev: string, netns: string | undefined): string {
  return netns === undefined ? dev : `${dev} (namespace ${netns})`;
}

function foreignXdpError(dev: string, netns: string | undefined, state: XdpState, ownId: number): NetmangleError {
  const ids = [...new Set([state.progId, state.drvProgId, state.skbProgId, state.hwProgId].filter((x): x is number => x !== undefined))];
  const mode = state.attached === 'multi' ? 'several modes' : `${state.attached} mode`;
  const which = ids.length ? ids.map(describeProgram).join(' and ') : 'a program';
  const ipLinkOff = ipCommand(netns, ['link', 'set', 'dev', dev, 'xdp', 'off']).join(' ');
  if (ids.length === 1 && ids[0] === ownId) {
    return new NetmangleError(`XDP program ${which} is already attached to ${where(dev, netns)}`, {
      hint: 'detach the earlier attachment first',
    });
  }
  return new HookBusyError(`${where(dev, netns)} already holds XDP program ${which} (${mode})`, {
    hint: `netmangle does not replace programs it did not attach: remove it first (\`${ipLinkOff}\`, or close its owner's link)`,
  });
}

function foreignTcxError(dev: string, netns: string | undefined, dir: TcDirection, ifindex: number, cause: unknown): NetmangleError {
  let which = 'another program';
  try {
    const ids = queryProgs(ifindex, dir === 'ingress' ? 'tcx_ingress' : 'tcx_egress').progIds;
    if (ids.length) which = `program${ids.length > 1 ? 's' : ''} ${ids.map(describeProgram).join(', ')}`;
  } catch { /* keep the generic wording */ }
  return new HookBusyError(`cannot attach at tcx ${dir} of ${where(dev, netns)}: it already holds ${which}`, {
    hint: 'detach the other program first, or attach with path netlink',
    cause,
  });
}

function resolvePath(hook: Hook, requested: AttachOptions['path']): AttachPath {
  const path = requested ?? 'auto';
  if (path === 'auto') {
    return features().attach[hook];
  }
  if (path === 'netlink') return 'netlink';
  if (path === 'link' || path === 'tcx') {
    if (hook === 'xdp' && path === 'tcx') throw new UsageError('path tcx is for the ingress and egress hooks, not xdp', { hint: 'use path link (or auto) for XDP' });
    return hook === 'xdp' ? 'link' : 'tcx';
  }
  throw new UsageError(`unknown attach path '${String(path)}'`, { hint: 'use auto, link, tcx or netlink' });
}

function checkProgramType(prog: Program, hook: Hook): void {
  const want = hook === 'xdp' ? 'xdp' : 'sched_cls';
  if (prog.type !== want) {
    throw new UsageError(`program '${prog.name}' is a ${prog.type} program; the ${hook} hook needs a ${want} program`);
  }
}

/**
 * clsact qdiscs this process added, with how many of our netlink tc attachments use each:
 * the last one detached removes the qdisc (if no other filter appeared on it meanwhile),
 * whichever direction added it. Keyed by namespace and ifindex.
 */
const ourClsact = new Map<string, number>();
const clsactKey = (netns: string | undefined, ifindex: number): string => `${netns ?? ''}\0${ifindex}`;

const NETLINK_WARNING = 'attached through netlink, not a BPF link: if netmangle crashes, the program stays attached until removed';

class AttachmentImpl implements Attachment {
  detached = false;
  xdpMode?: XdpMode;
  link?: Link;
  tcFilter?: ClsBpfFilterRef;
  warning?: string;
  /** netlink tc path: whether this attachment counts as a user of a clsact qdisc we added. */
  usesOurClsact = false;
  owner?: NetlinkOwner;

  constructor(
    readonly dev: string,
    readonly ifindex: number,
    readonly hook: Hook,
    readonly netns: string | undefined,
    readonly path: AttachPath,
    public progId: number,
  ) {}

  replace(prog: Program, current: Program): void {
    if (this.detached) throw new NetmangleError(`program ${this.progId} on ${where(this.dev, this.netns)} is already detached`);
    if (!this.link) throw new NetmangleError(`a program attached through netlink on ${where(this.dev, this.netns)} cannot be replaced in one step`);
    checkProgramType(prog, this.hook);
    updateLink(this.link, prog, current);
    this.progId = prog.id;
  }

  detach(): void {
    if (this.detached) return;
    if (this.link) {
      // Detach now even if the caller pinned the link, then drop our reference.
      tryDetachLink(this.link);
      this.link.close();
      this.detached = true;
      return;
    }
    // A namespace deleted meanwhile took its interfaces, and our program, with it.
    if (this.netns !== undefined && !netnsExists(this.netns)) {
      if (this.usesOurClsact) ourClsact.delete(clsactKey(this.netns, this.ifindex));
      this.detached = true;
      this.owner?.forget();
      return;
    }
    inNetns(this.netns, () => {
      if (this.hook === 'xdp') this.detachXdp();
      else this.detachTc();
    });
    this.detached = true;
    // Only once it is really off the hook: a failed detach leaves the record for the guardian.
    this.owner?.forget();
  }

  private detachXdp(): void {
    let state: XdpState;
    try {
      state = xdpQueryNetlink(this.ifindex);
    } catch (err) {
      if (err instanceof NetmangleError && /^no interface/.test(err.message)) return;
      throw err;
    }
    // Only remove our own program: someone may have replaced it since.
    const mode = this.xdpMode ?? 'skb';
    const current = mode === 'drv' ? state.drvProgId : state.skbProgId;
    if (current === this.progId) detachXdpNetlink(this.ifindex, { mode });
  }

  private detachTc(): void {
    const dir = this.hook as TcDirection;
    if (!getLink(this.ifindex)) return;
    if (this.tcFilter) {
      const ours = listClsBpfFilters(this.ifindex, dir)
        .find((f) => f.prio === this.tcFilter?.prio && f.handle === this.tcFilter?.handle);
      if (ours && ours.progId === this.progId) delClsBpfFilter(this.ifindex, dir, this.tcFilter);
    }
    if (!this.usesOurClsact) return;
    this.usesOurClsact = false;
    const key = clsactKey(this.netns, this.ifindex);
    const users = (ourClsact.get(key) ?? 1) - 1;
    if (users > 0) {
      ourClsact.set(key, users);
      return;
    }
    ourClsact.delete(key);
    // Filters of any kind (u32, flower, …) keep the qdisc: removing it would remove them too.
    if (listTcFilters(this.ifindex, 'ingress').length === 0 && listTcFilters(this.ifindex, 'egress').length === 0) {
      removeClsact(this.ifindex);
    }
  }

  disown(): void {
    this.owner?.forget();
    this.owner = undefined;
  }

  [Symbol.dispose](): void {
    this.detach();
  }
}

/**
 * Attaches `prog` (xdp for hook 'xdp', sched_cls for 'ingress'/'egress') to interface `dev`.
 * Refuses an interface whose XDP hook (or tcx hook, when the kernel says it is busy) holds a
 * program netmangle did not attach, naming that program. Errors are NetmangleErrors with a hint.
 */
export function attachProgram(prog: Program, opts: AttachOptions): Attachment {
  checkProgramType(prog, opts.hook);
  requireNetns(opts.netns);
  const path = resolvePath(opts.hook, opts.path);
  if (opts.tcPriority !== undefined && path !== 'netlink') {
    throw new UsageError(opts.hook === 'xdp'
      ? 'a filter priority applies to tc ingress and egress, not xdp'
      : `a filter priority applies to the netlink path (cls_bpf); tcx has none and puts a new program after those already at tc ${opts.hook}`,
    { hint: opts.hook === 'xdp' ? 'leave the priority out' : 'attach through netlink to choose a priority, or leave it out' });
  }

  if (path === 'netlink') opts.owner?.prepare?.();
  try {
    return inNetns(opts.netns, () => attachIn(prog, opts, path));
  } catch (err) {
    throw nameTheInterface(err, prog, opts);
  }
}

/**
 * Kernel refusals name an ifindex; users know the interface by name. Rewords BpfError and
 * NetlinkError to say which program, which hook, which interface, keeping errno and hint.
 */
function nameTheInterface(err: unknown, prog: Program, opts: AttachOptions): unknown {
  if (!(err instanceof BpfError || err instanceof NetlinkError)) return err;
  const reason = err instanceof NetlinkError
    ? `${err.code}${err.kernelMessage ? ` (${err.kernelMessage})` : ''}`
    : err.message.slice(err.message.lastIndexOf(': ') + 2);
  const hook = opts.hook === 'xdp' ? 'XDP' : `tc ${opts.hook}`;
  const hint = err.hint ?? (lacksNativeMode(err) && opts.hook === 'xdp' ? 'this driver has no native XDP: use xdp mode skb (or auto)' : undefined);
  return new NetmangleError(`cannot attach ${hook} program '${prog.name}' to ${where(opts.dev, opts.netns)}: ${reason}`, { hint, cause: err });
}

function attachIn(prog: Program, opts: AttachOptions, path: AttachPath): Attachment {
  const { dev, hook, netns } = opts;
  const linkInfo = getLink(dev);
  if (!linkInfo) throw noInterface(dev, netns);
  const ifindex = linkInfo.ifindex;
  const att = new AttachmentImpl(dev, ifindex, hook, netns, path, prog.id);
  const owner = path === 'netlink' ? opts.owner : undefined;
  const hold: NetlinkHold | undefined = owner && {
    netns, netnsInode: netnsInode(undefined), dev, ifindex, hook, progId: prog.id, progTag: programInfoByFd(prog.fd).tag,
    progName: prog.name, clsactAdded: false, attached: false,
  };
  try {
    attachHook(att, prog, opts, path, linkInfo, owner, hold);
  } catch (err) {
    owner?.forget();
    throw err;
  }
  if (owner && hold) {
    hold.attached = true;
    owner.record(hold);
    att.owner = owner;
  }
  // With an owner, something that outlives this process removes it after a crash.
  if (path === 'netlink' && !owner) att.warning = NETLINK_WARNING;
  return att;
}

/** The first priority after every filter at `dir` (1 when there is none). */
function priorityAfterOthers(ifindex: number, dir: TcDirection, dev: string, netns: string | undefined): number {
  const highest = Math.max(0, ...listTcFilters(ifindex, dir).map((f) => f.prio));
  if (highest >= 0xffff) {
    throw new NetmangleError(`tc ${dir} of ${where(dev, netns)} has a filter at the last priority (65535): there is no priority after it`, {
      hint: 'choose a free priority explicitly',
    });
  }
  return highest + 1;
}

function attachHook(
  att: AttachmentImpl, prog: Program, opts: AttachOptions, path: AttachPath, linkInfo: LinkInfo,
  owner: NetlinkOwner | undefined, hold: NetlinkHold | undefined,
): void {
  const { dev, hook, netns } = opts;
  const ifindex = linkInfo.ifindex;
  if (hook === 'xdp') {
    if (linkInfo.xdp.attached !== 'none') throw foreignXdpError(dev, netns, linkInfo.xdp, prog.id);
    const modes: XdpMode[] = opts.xdpMode === 'skb' ? ['skb'] : opts.xdpMode === 'drv' ? ['drv'] : ['drv', 'skb'];
    for (let i = 0; i < modes.length; i++) {
      const mode = modes[i] as XdpMode;
      try {
        if (path === 'link') att.link = createXdpLink(prog, ifindex, { mode });
        else {
          if (owner && hold) owner.record({ ...hold, xdpMode: mode });
          attachXdpNetlink(ifindex, prog.fd, { mode });
          if (hold) hold.xdpMode = mode;
        }
        att.xdpMode = mode;
        break;
      } catch (err) {
        if (isBusy(err)) throw foreignXdpError(dev, netns, xdpQueryNetlink(ifindex), prog.id);
        if (i < modes.length - 1 && lacksNativeMode(err)) continue;
        throw err;
      }
    }
  } else if (path === 'tcx') {
    try {
      att.link = createTcxLink(prog, ifindex, hook);
    } catch (err) {
      if (isBusy(err)) throw foreignTcxError(dev, netns, hook, ifindex, err);
      throw err;
    }
  } else {
    const key = clsactKey(netns, ifindex);
    const prio = opts.tcPriority ?? priorityAfterOthers(ifindex, hook, dev, netns);
    const handle = opts.tcHandle ?? 1;
    if (owner && hold) {
      hold.tcFilter = { prio, handle };
      owner.record(hold);
    }
    const added = ensureClsact(ifindex);
    if (added) ourClsact.delete(key); // a stale entry for a reused ifindex
    if (added && owner && hold) {
      hold.clsactAdded = true;
      owner.record(hold);
    }
    try {
      att.tcFilter = addClsBpfFilter(ifindex, hook, prog.fd, { name: prog.name || 'netmangle', prio, handle });
    } catch (err) {
      if (added) removeClsact(ifindex);
      if (isBusy(err)) {
        const other = listClsBpfFilters(ifindex, hook).find((f) => f.prio === prio);
        const which = other?.progId !== undefined ? `program ${describeProgram(other.progId)}` : 'another filter';
        throw new HookBusyError(`tc ${hook} of ${where(dev, netns)} already holds ${which} at priority ${prio}`, {
          hint: 'remove it first, or choose another priority (or none: netmangle then goes after the filters already there)', cause: err,
        });
      }
      throw err;
    }
    if (added || ourClsact.has(key)) {
      ourClsact.set(key, (ourClsact.get(key) ?? 0) + 1);
      att.usesOurClsact = true;
    }
  }
}
