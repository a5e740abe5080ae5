import type { BuiltObject } from './build.js';
export function emitC(_built: BuiltObject): string {
  throw new Error('not yet');
}
