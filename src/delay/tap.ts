/**
 * The delay line's TAP device: created through /dev/net/tun inside the interface's namespace,
 * not persistent, so it disappears with the last descriptor (netmangle's exit or death).
 */
import { closeSync, constants, openSync } from 'node:fs';
import { childProcess } from '../builtins.js';
import { NetmangleError } from '../errors.js';
import { errno, errnoName, libc } from '../kernel/ffi.js';
import { ifindexByName } from '../kernel/iface.js';
import { inNetns, ipCommand, netnsCommandPrefix } from '../kernel/netns.js';

/** _IOW('T', 202, int) from linux/if_tun.h. */
const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFNAMSIZ = 16;
/** Frames the TAP queues for the delay line to read (the kernel's default is 1000). */
const TAP_QUEUE_LEN = 10_000;

export interface Tap {
  /** Non-blocking descriptor: reads give frames the TAP transmitted, writes inject frames it receives. */
  readonly fd: number;
  readonly name: string;
  readonly ifindex: number;
  readonly netns: string | undefined;
  /** Closes the descriptor, which removes the device. Idempotent. */
  close(): void;
}

/** Creates a TAP device (`nmdl0`, `nmdl1` …, the kernel picks the number) in `netns` and sets it up. */
export function createTap(netns: string | undefined): Tap {
  let fd = -1;
  let name = '';
  inNetns(netns, () => {
    // The device is created in the namespace of the thread that opens /dev/net/tun.
    try {
      fd = openSync('/dev/net/tun', constants.O_RDWR | constants.O_NONBLOCK);
    } catch (err) {
      throw new NetmangleError(`cannot open /dev/net/tun for the delay line: ${(err as Error).message}`, { hint: 'load the tun module (modprobe tun) and run as root' });
    }
    const ifr = Buffer.alloc(40);
    ifr.write('nmdl%d', 0, 'latin1');
    ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI, IFNAMSIZ);
    if (libc.ioctl(fd, TUNSETIFF, ifr) < 0) {
      const why = errnoName(errno());
      closeSync(fd);
      throw new NetmangleError(`cannot create the delay line's TAP device: TUNSETIFF: ${why}`, { hint: 'run as root (CAP_NET_ADMIN)' });
    }
    name = ifr.toString('latin1', 0, IFNAMSIZ).replace(/\0.*$/s, '');
  });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    closeSync(fd);
  };
  try {
    // No IPv6 on the TAP: its own neighbour discovery would come out of the delay line.
    const [cmd, ...args] = [...netnsCommandPrefix(netns), 'sysctl', '-qw', `net.ipv6.conf.${name}.disable_ipv6=1`];
    childProcess().spawnSync(cmd!, args, { encoding: 'utf8' });
    // A long transmit queue: frames wait there (instead of being dropped) while the line's
    // thread is kept off the CPU for a few milliseconds.
    ip(netns, ['link', 'set', 'dev', name, 'addrgenmode', 'none', 'txqueuelen', String(TAP_QUEUE_LEN), 'up']);
    const ifindex = ifindexByName(name, netns);
    return { fd, name, ifindex, netns, close };
  } catch (err) {
    close();
    throw err;
  }
}

function ip(netns: string | undefined, args: string[]): void {
  const [cmd, ...rest] = ipCommand(netns, args);
  const r = childProcess().spawnSync(cmd!, rest, { encoding: 'utf8' });
  if (r.status !== 0) throw new NetmangleError(`ip ${args.join(' ')}: ${(r.stderr ?? '').trim()}`);
}

