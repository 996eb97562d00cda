/** Options of `getEnv` / `getEnvs`: `tracked` (default `true`) makes the value part of the cache key. */
export interface GetEnvOptions {
  tracked?: boolean;
}
/** A glob over env names (`'VITE_*'`) or a literal prefix (`{ prefix: 'VITE_' }`). */
export type GetEnvsQuery = string | { prefix: string };

/** Reads under `path` do not become cache inputs of this run. No-op outside Baton. */
export function ignoreInput(path: string): void;
/** Writes under `path` do not become cache outputs of this run. No-op outside Baton. */
export function ignoreOutput(path: string): void;
/** This run is not cached; `reason` is shown to the user. No-op outside Baton. */
export function disableCache(reason?: string): void;
/** The value of `name` in the runner's environment (tracked by default); `process.env[name]` outside Baton. */
export function getEnv(name: string, options?: GetEnvOptions): string | undefined;
/** The matching variables of the runner's environment (tracked by default); `process.env` outside Baton. */
export function getEnvs(query: GetEnvsQuery, options?: GetEnvOptions): Record<string, string>;
/** Whether this process runs under `baton run` (`BATON_IPC` is set). */
export function inBaton(): boolean;
/** The `@voidzero-dev/vite-task-client` runtime contract: the five methods above. */
export function load(options?: { version?: number }): {
  ignoreInput: typeof ignoreInput;
  ignoreOutput: typeof ignoreOutput;
  disableCache: typeof disableCache;
  getEnv: typeof getEnv;
  getEnvs: typeof getEnvs;
};
