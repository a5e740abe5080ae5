/**
 * Undo actions for everything the bench creates (labs, pinned objects, attached programs,
 * temporary files), run in reverse order at the end of a section, on failure, and on
 * SIGINT/SIGTERM, so an interrupted run leaves nothing behind.
 */

type Undo = () => void | Promise<void>;

const stack: Array<{ what: string; undo: Undo }> = [];
let signalsHooked = false;

/** Registers an undo action; returns a function that runs it now (once) and forgets it. */
export function onCleanup(what: string, undo: Undo): () => Promise<void> {
  hookSignals();
  const entry = { what, undo };
  stack.push(entry);
  let done = false;
  return async () => {
    if (done) return;
    done = true;
    const i = stack.indexOf(entry);
    if (i >= 0) stack.splice(i, 1);
    await undo();
  };
}

/** Runs every registered undo action, newest first; failures are reported, not thrown. */
export async function cleanupAll(report: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<void> {
  while (stack.length > 0) {
    const { what, undo } = stack.pop()!;
    try {
      await undo();
    } catch (err) {
      report(`bench: cleanup of ${what} failed: ${(err as Error).message}`);
    }
  }
}

function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`\nbench: ${sig}, cleaning up\n`);
      void cleanupAll().finally(() => process.exit(130));
    });
  }
}
