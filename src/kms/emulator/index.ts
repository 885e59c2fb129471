export { startEmulator, type EmulatorOptions, type RunningEmulator, type RuntimeConfig } from './server.js';
export type { EmulatorStats } from './stats.js';
export type { FaultRule } from './faults.js';
export type { CloudTrailEvent } from './request-log.js';
export { KmsError } from './errors.js';
export { canonicalContext, BLOB_VERSION } from './blob.js';
export {
  KeyStore,
  type AliasRecord,
  type CreateKeyInput,
  type GrantRecord,
  type KeyMetadata,
  type KeyRecord,
  type KeySpec,
  type KeyState,
  type KeyStoreOptions,
  type KeyUsage,
  type PersistedState,
  type Tag,
} from './key-store.js';
