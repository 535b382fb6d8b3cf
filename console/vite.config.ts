import react from '@vitejs/plugin-react'
import { defineConfig } from 'vitest/config'

// Where `npm run dev` sends API calls: a running `ferry serve`.
const ferry = process.env.FERRY_URL ?? 'http://127.0.0.1:8080'

export default defineConfig({
  base: '/console/',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    // The console is served under a CSP without 'unsafe-inline': nothing may be inlined
    // into index.html, and assets stay files (no data: URLs for fonts or scripts).
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
    chunkSizeWarningLimit: 400,
    rolldownOptions: {
      output: {
        // `page-usage-HASH.js` rather than `index-HASH.js` for every page, so the size report
        // can tell them apart.
        chunkFileNames: (chunk) => {
          const page = /\/src\/pages\/([\w-]+)\/(?:index|(\w+))\.tsx$/.exec(chunk.facadeModuleId ?? '')
          if (page) return `assets/page-${page[1]}${page[2] ? `-${page[2]}` : ''}-[hash].js`
          return 'assets/[name]-[hash].js'
        },
      },
    },
  },
  server: {
    proxy: {
      '/admin': ferry,
      '/v1': ferry,
      '/metrics': ferry,
      '/healthz': ferry,
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
    restoreMocks: true,
  },
})
