// Directory Sync in Azure: the function app (Flex Consumption, Linux, Python 3.11), its Storage account (host
// storage, deployment package, the app's tables), a Service Bus namespace with the app's three queues, Key Vault for
// the secrets, Application Insights on a Log Analytics workspace, and one user-assigned managed identity holding
// every data role the app needs. No connection string or key is stored anywhere: storage, Service Bus, Key Vault
// and Application Insights are reached with the identity, and Microsoft Graph with a federated credential that
// trusts it (see infra/README.md).
//
// Written against the Microsoft.Web, Microsoft.ServiceBus, Microsoft.Storage, Microsoft.KeyVault and
// Microsoft.Insights reference pages; NOT compiled here (no Bicep CLI in the build sandbox). Run
// `az bicep build --file infra/main.bicep` before the first deployment.
targetScope = 'resourceGroup'

@description('Region of every resource. It must offer Flex Consumption: az functionapp list-flexconsumption-locations')
param location string = resourceGroup().location

@description('Short lowercase name used in every resource name (letters and digits).')
@minLength(3)
@maxLength(12)
param appName string = 'dirsync'

@description('Application (client) id of the multi-tenant app registration (GRAPH_CLIENT_ID).')
param graphClientId string

@description('Base URL of the portal: enrollment links and the consent result point there (PORTAL_BASE_URL).')
param portalBaseUrl string

@description('Portal page the consent callback redirects to (PORTAL_CONSENT_RETURN_PATH).')
param portalConsentReturnPath string = '/directory-sync'

@description('Product name shown in e-mails (PORTAL_NAME).')
param portalName string = 'Identity Portal'

@description('HS256 key of the portal caller tokens, shared with the portal backend (PORTAL_TOKEN_SECRET).')
@secure()
@minLength(32)
param portalTokenSecret string

// No secret is drawn here (no newGuid() default): a default is evaluated again on every deployment, so each redeploy
// would write a new key into the host and the notification-url secret, and Graph's deliveries to the URL its
// subscriptions were made with would get 401 (learn.microsoft.com/azure/azure-resource-manager/bicep/bicep-functions-string#newguid).
// Draw it once and pass the same value on every deployment (infra/README.md, step 2).
@description('Function key Microsoft Graph presents to the notification webhook (the `code` of the notification URL): letters and digits, drawn once and kept.')
@secure()
@minLength(32)
param notificationKeyValue string

@description('HMAC key of consent states and enrollment links (SIGNING_SECRET).')
@secure()
@minLength(32)
param signingSecret string

@description('SMTP relay host; empty turns enrollment e-mail off (MAIL_SENDER=none).')
param smtpHost string = ''

@description('Sender of the enrollment e-mails, e.g. "Portal <no-reply@example.com>" (MAIL_FROM); required with smtpHost.')
param mailFrom string = ''

param smtpPort int = 587

@allowed(['starttls', 'tls', 'none'])
param smtpSecurity string = 'starttls'

param smtpUsername string = ''

@description('SMTP password; stored in Key Vault. Needs smtpUsername.')
@secure()
param smtpPassword string = ''

@description('NCRONTAB of the nightly sync, in UTC (Flex Consumption has no WEBSITE_TIME_ZONE).')
param nightlySyncSchedule string = '0 0 2 * * *'

@description('A run deactivating more than this share of active synced users waits for approval...')
param deprovisionGuardPercent int = 20

@description('...if it also deactivates more than this many users.')
param deprovisionGuardMinUsers int = 10

@description('Graph requests in flight per instance. Every instance counts against the same per-tenant Graph limits.')
param graphConcurrency int = 4

@description('Upper bound of instances of the whole app; it also bounds the Graph load on one customer tenant.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([2048, 4096])
param instanceMemoryMB int = 2048

// The queues, one definition (queues.json) that the local broker declares too (local/broker/queues.py): names, lock,
// max delivery count, time to live, duplicate detection. The keys are the app settings that name the queues.
var queueDefinition = loadJsonContent('queues.json')
var groupSyncQueue = queueDefinition.queues.GROUP_SYNC_QUEUE.name
var enrollmentQueue = queueDefinition.queues.ENROLLMENT_QUEUE.name
var changeQueue = queueDefinition.queues.CHANGE_QUEUE.name
var alertQueue = queueDefinition.queues.ALERT_QUEUE.name
var webhookQueue = queueDefinition.queues.WEBHOOK_QUEUE.name
var deploymentContainer = 'app-package'

var token = uniqueString(resourceGroup().id, appName)
var names = {
  identity: 'id-${appName}-${token}'
  storage: take(toLower('st${appName}${token}'), 24)
  serviceBus: 'sb-${appName}-${token}'
  keyVault: take('kv-${appName}-${token}', 24)
  logs: 'log-${appName}-${token}'
  insights: 'appi-${appName}-${token}'
  plan: 'plan-${appName}-${token}'
  functionApp: 'func-${appName}-${token}'
}

// Built-in role definition ids (Azure RBAC built-in roles reference).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // host storage (leases, timers) and the package
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // the app's tables (it creates them)
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // the queue triggers
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // the app sends group jobs and invitations
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault references in app settings
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Entra-authenticated telemetry
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: names.identity
  location: location
}

// ---------------------------------------------------------------- Storage

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: names.storage
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity only: nothing holds an account key
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
}

resource storageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in [roles.storageBlobDataOwner, roles.storageTableDataContributor]: {
    name: guid(storage.id, identity.id, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

// ---------------------------------------------------------------- Service Bus

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: names.serviceBus
  location: location
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    minimumTlsVersion: '1.2'
    disableLocalAuth: true // no SAS keys: Entra ID (the managed identity) only
  }
}

resource queues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [
  for queue in items(queueDefinition.queues): {
    parent: serviceBus
    name: queue.value.name
    properties: {
      // The longest lock Service Bus allows. One group segment reads up to MAX_PAGES_PER_MESSAGE (25) Graph pages
      // within SEGMENT_TIME_BUDGET_SECONDS (150), so it finishes inside one lock; the host also renews locks
      // (host.json maxAutoLockRenewalDuration), so a slow Graph does not cause a second concurrent delivery.
      lockDuration: queueDefinition.properties.lockDuration
      maxDeliveryCount: queueDefinition.properties.maxDeliveryCount
      // Expired and exhausted messages go to the dead-letter queue, whose trigger fails the group or the change run,
      // or records the failed invitation or alert, so a run always ends instead of staying "running".
      deadLetteringOnMessageExpiration: queueDefinition.properties.deadLetteringOnMessageExpiration
      defaultMessageTimeToLive: queue.value.defaultMessageTimeToLive
      // First sends carry deterministic ids (run:group:segment, enroll:org:user, alert:<event hash>): a send retried
      // after a timeout that in fact succeeded is dropped here. Within the window Service Bus also drops (as accepted)
      // any other message with a seen id, scheduled ones included, so every re-queue and retry carries an id of its
      // own (see infra/README.md).
      requiresDuplicateDetection: queueDefinition.properties.requiresDuplicateDetection
      duplicateDetectionHistoryTimeWindow: queueDefinition.properties.duplicateDetectionHistoryTimeWindow
      maxSizeInMegabytes: queueDefinition.properties.maxSizeInMegabytes
      requiresSession: false
      enablePartitioning: false
    }
  }
]

resource serviceBusRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in [roles.serviceBusDataReceiver, roles.serviceBusDataSender]: {
    name: guid(serviceBus.id, identity.id, role)
    scope: serviceBus
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

// ---------------------------------------------------------------- Key Vault (the three secrets)

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: names.keyVault
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // A deleted secret (or vault) cannot be purged before its retention ends: the app's signing keys are not lost
    // to a mistaken or malicious delete. Irreversible once on; a redeploy into a new resource group needs a new name.
    enablePurgeProtection: true
  }
}

resource portalTokenSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'portal-token-secret'
  properties: {
    value: portalTokenSecret
    contentType: 'text/plain; HS256 key of the portal caller tokens'
  }
}

// Graph cannot present the portal's token to the notification webhook: a function key of its own rides in the
// notification URL's `code`. The whole URL is the secret (a Key Vault reference is one whole setting value).
// After the app settings: writing a key before the host's storage settings exist can fail or be lost when the host
// restarts with them (Azure/Azure-Functions#1657, Azure/bicep-types-az#1356).
resource notificationKey 'Microsoft.Web/sites/host/functionKeys@2024-04-01' = {
  name: '${functionApp.name}/default/graph-notifications'
  properties: {
    value: notificationKeyValue
  }
  dependsOn: [
    appSettings
  ]
}

resource notificationUrlValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'notification-url'
  properties: {
    contentType: 'text/uri-list; the webhook URL with its function key'
    value: 'https://${functionApp.properties.defaultHostName}/api/directory/notifications?code=${notificationKeyValue}'
  }
}

resource signingSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'signing-secret'
  properties: {
    value: signingSecret
    contentType: 'text/plain; HMAC key of consent states and enrollment links'
  }
}

resource smtpPasswordValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(smtpPassword)) {
  parent: keyVault
  name: 'smtp-password'
  properties: {
    value: smtpPassword
    contentType: 'text/plain; SMTP relay password'
  }
}

resource keyVaultRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, identity.id, roles.keyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------- Monitoring

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: names.logs
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: names.insights
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true // telemetry is accepted only with the identity's Entra token
  }
}

resource insightsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------- Function app

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: names.plan
  location: location
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: names.functionApp
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled' // deployments go through the package container, never FTP
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      // Flex Consumption takes the language here; FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are
      // not app settings on this plan.
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    packageContainer
    storageRoles
  ]
}

// Every app setting the app reads (sync/settings.py) plus the host's own. This resource replaces the whole set.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    // The Functions host: storage and telemetry through the identity.
    AzureWebJobsStorage__accountName: storage.name
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identity.properties.clientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'

    // Secrets, resolved from Key Vault by the platform with keyVaultReferenceIdentity.
    PORTAL_TOKEN_SECRET: '@Microsoft.KeyVault(VaultName=${keyVault.name};SecretName=${portalTokenSecretValue.name})'
    SIGNING_SECRET: '@Microsoft.KeyVault(VaultName=${keyVault.name};SecretName=${signingSecretValue.name})'

    // Table Storage with the identity (TABLES_CONNECTION_STRING stays unset).
    TABLES_ENDPOINT: storage.properties.primaryEndpoints.table
    TABLE_PREFIX: 'dirsync'

    // Service Bus: the identity-based connection the triggers use; the app's sender reads the same namespace.
    ServiceBusConnection__fullyQualifiedNamespace: '${serviceBus.name}.servicebus.windows.net'
    ServiceBusConnection__credential: 'managedidentity'
    ServiceBusConnection__clientId: identity.properties.clientId
    GROUP_SYNC_QUEUE: groupSyncQueue
    ENROLLMENT_QUEUE: enrollmentQueue
    ALERT_QUEUE: alertQueue
    WEBHOOK_QUEUE: webhookQueue
    NIGHTLY_SYNC_SCHEDULE: nightlySyncSchedule
    CHANGE_QUEUE: changeQueue
    MAX_DELIVERY_COUNT: string(queueDefinition.properties.maxDeliveryCount) // a change job's last delivery ends its run
    WATCH_RENEWAL_SCHEDULE: '0 17 * * * *' // hourly; watches live WATCH_LIFETIME_HOURS (72) and renew at half-life
    RECOVERY_SCHEDULE: '30 * * * * *' // every minute: stranded runs sent or ended, invitations no run will send re-queued
    ENROLLMENT_REMINDERS_SCHEDULE: '0 5 * * * *' // hourly: the enrollment reminders due
    NOTIFICATION_URL: '@Microsoft.KeyVault(VaultName=${keyVault.name};SecretName=${notificationUrlValue.name})'

    // Microsoft Graph: app-only tokens per customer tenant, proven by the identity (federated credential).
    GRAPH_BASE_URL: 'https://graph.microsoft.com/v1.0'
    GRAPH_CLIENT_ID: graphClientId
    GRAPH_CREDENTIAL: 'managed_identity'
    // Also the identity DefaultAzureCredential uses for tables and the Service Bus sender.
    MANAGED_IDENTITY_CLIENT_ID: identity.properties.clientId
    GRAPH_CONCURRENCY: string(graphConcurrency)
    AUTHORITY_HOST: environment().authentication.loginEndpoint
    CONSENT_REDIRECT_URI: 'https://${functionApp.properties.defaultHostName}/api/directory/consent'

    // The portal.
    PORTAL_BASE_URL: portalBaseUrl
    PORTAL_CONSENT_RETURN_PATH: portalConsentReturnPath
    PORTAL_NAME: portalName

    // Sync behaviour.
    DEPROVISION_GUARD_PERCENT: string(deprovisionGuardPercent)
    DEPROVISION_GUARD_MIN_USERS: string(deprovisionGuardMinUsers)
    MAX_PAGES_PER_MESSAGE: '25'
    SEGMENT_TIME_BUDGET_SECONDS: '150'
    RUN_STALE_AFTER_MINUTES: '180'
    ENROLLMENT_TOKEN_TTL_HOURS: '168'
    HISTORY_RETENTION_DAYS: '90'

    // Enrollment e-mail.
    MAIL_SENDER: empty(smtpHost) ? 'none' : 'smtp'
    MAIL_FROM: mailFrom
    SMTP_HOST: smtpHost
    SMTP_PORT: string(smtpPort)
    SMTP_SECURITY: smtpSecurity
    SMTP_USERNAME: smtpUsername
    SMTP_PASSWORD: empty(smtpPassword) ? '' : '@Microsoft.KeyVault(VaultName=${keyVault.name};SecretName=smtp-password)'
    SMTP_TIMEOUT_SECONDS: '30'
  }
  dependsOn: [
    smtpPasswordValue
    keyVaultRole
    serviceBusRoles
    queues
    insightsRole
  ]
}

output functionAppName string = functionApp.name
output apiBaseUrl string = 'https://${functionApp.properties.defaultHostName}/api'
output consentRedirectUri string = 'https://${functionApp.properties.defaultHostName}/api/directory/consent'
@description('Subject of the federated credential on the app registration (the identity\'s object id).')
output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
output keyVaultName string = keyVault.name
output serviceBusNamespace string = serviceBus.name
output storageAccountName string = storage.name
