/**
 * Network interfaces by name, asked of rtnetlink inside the right namespace (sysfs and
 * if_nametoindex() would answer for the namespace the process started in).
 */
import { inNetns } from './netns.js';
import { dumpLinks, getLink, noInterface, type LinkInfo } from './rtnetlink.js';

export type { LinkInfo } from './rtnetlink.js';

/** The interface called `name` in `netns` (default: the current namespace), or a NetmangleError. */
export function linkByName(name: string, netns?: string): LinkInfo {
  const link = inNetns(netns, () => getLink(name));
  if (!link) throw noInterface(name, netns);
  return link;
}

/** The ifindex of `name` in `netns`; throws "no interface X in namespace Y" when missing. */
export function ifindexByName(name: string, netns?: string): number {
  return linkByName(name, netns).ifindex;
}

/** The name of interface `ifindex` in `netns`, or undefined when there is none. */
export function ifnameByIndex(ifindex: number, netns?: string): string | undefined {
  return inNetns(netns, () => getLink(ifindex))?.name;
}

/** Every interface in `netns` (default: the current namespace), by ifindex. */
export function listLinks(netns?: string): LinkInfo[] {
  return inNetns(netns, () => dumpLinks());
}
