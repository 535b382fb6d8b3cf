import { QueryClientProvider } from '@tanstack/react-query'
import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'
import { App } from './App'
import { queryClient } from './api/queryClient'
import { I18nProvider } from './i18n'
import { readSignInError } from './pages/signin/signinError'
import { applyStoredTheme, ThemeProvider } from './theme'
import './styles/app.css'

applyStoredTheme()
// A failed single sign-on's `?signin_error=` leaves the address before anything is shown.
readSignInError()

const root = document.getElementById('root')
if (root) {
  createRoot(root).render(
    <StrictMode>
      <ThemeProvider>
        <I18nProvider>
          <QueryClientProvider client={queryClient}>
            <App />
          </QueryClientProvider>
        </I18nProvider>
      </ThemeProvider>
    </StrictMode>,
  )
}
