import { SdkTransport } from './sdk.js';
import { SignedUndiciTransport } from './signed.js';
import type { KmsTransport, KmsTransportName, KmsTransportOptions } from './types.js';

export * from './types.js';

/** Transport used when none is named; BENCHMARKS.md has the measurements behind the choice. */
export const defaultKmsTransport: KmsTransportName = 'signed-undici';

/** Creates the named KMS transport. */
export function createKmsTransport(name: KmsTransportName, options: KmsTransportOptions): KmsTransport {
  switch (name) {
    case 'sdk':
    case 'sdk-undici':
      return new SdkTransport(name, options);
    case 'signed-undici':
      return new SignedUndiciTransport(options);
  }
}
