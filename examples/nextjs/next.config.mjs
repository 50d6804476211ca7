// Next.js configuration of relay's example app.
/** @type {import('next').NextConfig} */
const nextConfig = {
  // The example lives inside relay's repository: its own folder is the project root
  // (otherwise Next guesses from lock files further up).
  outputFileTracingRoot: import.meta.dirname,
  turbopack: { root: import.meta.dirname },
};

export default nextConfig;
