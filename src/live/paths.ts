/** Where netmangle keeps its records (a tmpfs: they describe this boot only). */
import { join } from 'node:path';

export const RUN_DIR = '/run/netmangle';
/** Pinned rule sets (`run --pin`): one JSON record per hook. */
export const PINNED_DIR = join(RUN_DIR, 'pinned');
/** Foreground runs: one record per attached group, for `status`. */
export const RUNS_DIR = join(RUN_DIR, 'runs');
/** Netlink attachments and who owns them, for the guardian, `status` and `clear`. */
export const OWNED_DIR = join(RUN_DIR, 'owned');
