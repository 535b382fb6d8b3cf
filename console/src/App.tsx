// Which page a path shows, for whom. Pages load on demand (code-split), the sign-in page and
// the frame with the first bundle.

import { lazy, Suspense, useEffect, type ReactNode } from 'react'
import { isOperator, mayAdministerTenant, useSession } from './api/session'
import type { Session } from './api/types'
import { Layout } from './components/Layout'
import { Page } from './components/Page'
import { ErrorNotice, Loading } from './components/Status'
import { useI18n } from './i18n'
import { Link, matchPath, navigate, useLocation } from './lib/router'
import { SignInPage } from './pages/signin'
import { clearSignInError } from './pages/signin/signinError'

const OverviewPage = lazy(() => import('./pages/overview'))
const UsagePage = lazy(() => import('./pages/usage'))
const KeysPage = lazy(() => import('./pages/keys'))
const BillingPage = lazy(() => import('./pages/billing'))
const PlaygroundPage = lazy(() => import('./pages/playground'))
const TenantsPage = lazy(() => import('./pages/tenants'))
const TenantPage = lazy(() => import('./pages/tenants/TenantPage'))
const ModelsPage = lazy(() => import('./pages/models'))
const ModelPage = lazy(() => import('./pages/models/ModelPage'))
const PoolPage = lazy(() => import('./pages/pool'))
const HealthPage = lazy(() => import('./pages/health'))

function NotFound() {
  const { t } = useI18n()
  return (
    <Page title={t('notFound.title')}>
      <p>{t('notFound.body')}</p>
      <p>
        <Link to="/">{t('notFound.home')}</Link>
      </p>
    </Page>
  )
}

function Redirect({ to }: { to: string }) {
  useEffect(() => navigate(to, { replace: true }), [to])
  return null
}

type Routes = [pattern: string, render: (params: Record<string, string>) => ReactNode][]

function routesFor(session: Session): Routes {
  const tenantId = session.tenant_id
  if (isOperator(session)) {
    return [
      ['/', () => <Redirect to="/tenants" />],
      ['/tenants', () => <TenantsPage />],
      ['/tenants/:id', ({ id = '' }) => <TenantPage tenantId={id} view="overview" session={session} />],
      ['/tenants/:id/usage', ({ id = '' }) => <TenantPage tenantId={id} view="usage" session={session} />],
      ['/tenants/:id/keys', ({ id = '' }) => <TenantPage tenantId={id} view="keys" session={session} />],
      ['/tenants/:id/billing', ({ id = '' }) => <TenantPage tenantId={id} view="billing" session={session} />],
      ['/models', () => <ModelsPage />],
      ['/models/:id', ({ id = '' }) => <ModelPage modelId={id} />],
      ['/pool', () => <PoolPage />],
      ['/health', () => <HealthPage />],
      ['/playground', () => <PlaygroundPage />],
    ]
  }
  if (!tenantId) return [['/playground', () => <PlaygroundPage />]]
  const admin = mayAdministerTenant(session)
  return [
    ['/', () => <OverviewPage tenantId={tenantId} session={session} />],
    ['/usage', () => <UsagePage tenantId={tenantId} session={session} />],
    ...(admin
      ? ([
          ['/keys', () => <KeysPage tenantId={tenantId} session={session} />],
          ['/billing', () => <BillingPage tenantId={tenantId} />],
        ] satisfies Routes)
      : []),
    ['/playground', () => <PlaygroundPage />],
  ]
}

function Routed({ session }: { session: Session }) {
  const { path } = useLocation()
  for (const [pattern, render] of routesFor(session)) {
    const params = matchPath(pattern, path)
    if (params) return <>{render(params)}</>
  }
  return <NotFound />
}

export function App() {
  const session = useSession()
  const { t } = useI18n()
  const signedIn = !!session.data
  useEffect(() => {
    // Signed in: an earlier sign-in's failure is no longer news.
    if (signedIn) clearSignInError()
  }, [signedIn])
  if (session.isPending) {
    return (
      <main id="main" className="signin">
        <h1 className="visually-hidden">{t('app.name')}</h1>
        <Loading />
      </main>
    )
  }
  if (session.isError) {
    return (
      <main id="main" className="signin">
        <div className="signin-card">
          <h1>{t('app.name')}</h1>
          <ErrorNotice error={session.error} onRetry={() => void session.refetch()} />
        </div>
      </main>
    )
  }
  if (!session.data) return <SignInPage />
  return (
    <Layout session={session.data}>
      <Suspense fallback={<Loading />}>
        <Routed session={session.data} />
      </Suspense>
    </Layout>
  )
}
