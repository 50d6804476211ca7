// What the sources may read from the build environment, for the typecheck only (not shipped):
// bundlers such as Next.js inline `process.env.NEXT_PUBLIC_…` into browser bundles.
declare const process: { env?: Record<string, string | undefined> } | undefined;
