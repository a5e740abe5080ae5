/**
 * Noticing that an interface a program is attached to went away: deleted (`ip link del`),
 * moved to another namespace, or its namespace deleted (`ip netns del`).
 *
 * The interface: a NETLINK_ROUTE socket in its namespace, subscribed to RTNLGRP_LINK, gets an
 * RTM_DELLINK for it when it is deleted and when it is moved out (the namespace it leaves
 * sees it go). Its namespace: that socket, like the delay line's TAP and any socket opened in
 * it, holds a reference to the namespace, so after `ip netns del` the namespace lives on and
 * its interfaces with it; no RTM_DELLINK comes. What `ip netns del` does remove is the name,
 * /run/netns/NAME: the watch compares it with the namespace it opened (nsfs inode), so a
 * namespace deleted, or deleted and created again under the same name, counts as gone. Once
 * the caller has closed everything it holds in there, the kernel frees the namespace.
 *
 * Nothing here waits: `check()` reads what is queued, for a caller's timer to call.
 */
import { statSync } from 'node:fs';
import { NETLINK_ROUTE, NetlinkSocket } from './netlink.js';
import { inNetns, NETNS_RUN_DIR } from './netns.js';
import { getLink, RTM } from './rtnetlink.js';

/** RTMGRP_LINK (1 << (RTNLGRP_LINK - 1)), from include/uapi/linux/rtnetlink.h. */
const RTMGRP_LINK = 0x1;

export interface LinkWatch extends Disposable {
  /** Why the interface is gone (one phrase), or undefined while it is there. */
  check(): string | undefined;
  close(): void;
}

/** The inode of namespace `name`'s nsfs file, or undefined when the name is gone. */
function netnsInode(name: string): number | undefined {
  return statSync(`${NETNS_RUN_DIR}/${name}`, { throwIfNoEntry: false })?.ino;
}

/** Starts watching interface `ifindex` (called `dev`) in `netns` (default: the current namespace). */
export function watchLink(dev: string, ifindex: number, netns?: string): LinkWatch {
  const where = netns ? ` in namespace ${netns}` : '';
  const deleted = `namespace ${netns} was deleted`;
  const inode = netns === undefined ? undefined : netnsInode(netns);
  // Already gone (deleted since the caller attached): the first check says so.
  if (netns !== undefined && inode === undefined) return { check: () => deleted, close: () => {}, [Symbol.dispose]: () => {} };
  // Subscribe first, then look: a deletion in between is then seen either way.
  let sock: NetlinkSocket;
  try {
    sock = inNetns(netns, () => NetlinkSocket.open(NETLINK_ROUTE, RTMGRP_LINK));
  } catch (err) {
    if (netns !== undefined && netnsInode(netns) !== inode) return { check: () => deleted, close: () => {}, [Symbol.dispose]: () => {} };
    throw err;
  }
  let gone: string | undefined;
  try {
    if (!getLink(ifindex, sock)) gone = `interface ${dev}${where} is gone`;
  } catch (err) {
    sock.close();
    throw err;
  }
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    sock.close();
  };
  const check = (): string | undefined => {
    if (gone || closed) return gone;
    if (netns !== undefined) {
      const now = netnsInode(netns);
      if (now === undefined) return (gone = deleted);
      if (now !== inode) return (gone = `namespace ${netns} was deleted (a new one has its name)`);
    }
    const { messages, overflow } = sock.pollNotifications();
    for (const m of messages) {
      if (m.type === RTM.DELLINK && m.payload.length >= 8 && m.payload.readInt32LE(4) === ifindex) {
        return (gone = `interface ${dev}${where} was deleted or moved to another namespace`);
      }
    }
    // Notifications were lost: ask for the interface itself (the socket lives in its namespace).
    if (overflow && !getLink(ifindex, sock)) return (gone = `interface ${dev}${where} is gone`);
    return undefined;
  };
  return { check, close, [Symbol.dispose]: close };
}
