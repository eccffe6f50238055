# dropwire installer for Windows, served by the relay at /install.ps1. In PowerShell:
#
#   & ([scriptblock]::Create((irm https://RELAY/install.ps1))) TOKEN
#
# Downloads dropwire-win-x64.exe from the relay it came from, checks its SHA-256 against the relay's
# SHA256SUMS, installs it (%ProgramFiles%\dropwire as administrator, %LOCALAPPDATA%\Programs\dropwire
# otherwise), enrolls with TOKEN (`dropwire init`) and, as administrator, installs the Windows service
# (`dropwire service install`, which needs WinSW: -WinSW PATH). It prints what it did and how to undo it.
#
#   -Root DIR   install under DIR (tests); the service files are written there and nothing is started
#   -DryRun     download and check, then print the commands it would run, and run none of them
#   -WinSW PATH WinSW-x64.exe (WinSW 3, https://github.com/winsw/winsw/releases): it is on no package
#               registry, so dropwire does not bundle it
#   -NoService  enroll only
#   -Base URL   the relay to download from (default: the one that served this script)
param(
  [Parameter(Position = 0)][string]$Token,
  [string]$Root = '',
  [switch]$DryRun,
  [string]$WinSW = '',
  [switch]$NoService,
  [string]$Base = '__DROPWIRE_BASE_URL__'
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Fail([string]$Message) {
  Write-Error "dropwire install: $Message" -ErrorAction Continue
  exit 1
}

if (-not $Token) { Fail 'usage: & ([scriptblock]::Create((irm RELAY/install.ps1))) TOKEN   (the token from `dropwire relay device add NAME`)' }
if ($Base -notmatch '^https?://') { Fail 'no relay address: pass -Base https://RELAY' }
$Base = $Base.TrimEnd('/')

$arch = if ($env:PROCESSOR_ARCHITEW6432) { $env:PROCESSOR_ARCHITEW6432 } else { $env:PROCESSOR_ARCHITECTURE }
if ($arch -ne 'AMD64') { Fail "unsupported processor $arch`: dropwire ships dropwire-win-x64.exe for x64 Windows" }
$file = 'dropwire-win-x64.exe'

$tmp = Join-Path ([System.IO.Path]::GetTempPath()) ("dropwire-install-" + [System.Guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $tmp | Out-Null
try {
  Write-Output "Downloading $file from $Base"
  try {
    Invoke-WebRequest -UseBasicParsing -Uri "$Base/download/SHA256SUMS" -OutFile (Join-Path $tmp 'SHA256SUMS')
    Invoke-WebRequest -UseBasicParsing -Uri "$Base/download/$file" -OutFile (Join-Path $tmp $file)
  } catch {
    Fail "could not download from $Base`: $($_.Exception.Message)"
  }
  $want = $null
  foreach ($line in Get-Content (Join-Path $tmp 'SHA256SUMS')) {
    $parts = $line -split '\s+', 2
    if ($parts.Count -eq 2 -and ($parts[1] -eq $file -or $parts[1] -eq "*$file")) { $want = $parts[0].ToLowerInvariant(); break }
  }
  if (-not $want) { Fail "SHA256SUMS on the relay does not list $file" }
  $got = (Get-FileHash -Algorithm SHA256 -Path (Join-Path $tmp $file)).Hash.ToLowerInvariant()
  if ($got -ne $want) { Fail "checksum mismatch for $file`: got $got, SHA256SUMS says $want; refusing to install it" }
  Write-Output "Checked SHA-256 $got"

  $principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
  $admin = $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
  if ($admin) {
    $binDir = Join-Path $env:ProgramFiles 'dropwire'
    $homeDir = Join-Path $env:ProgramData 'dropwire'
  } else {
    $binDir = Join-Path $env:LOCALAPPDATA 'Programs\dropwire'
    $homeDir = Join-Path $env:APPDATA 'dropwire'
  }
  $bin = Join-Path $binDir 'dropwire.exe'
  $rootBinDir = if ($Root) { Join-Path $Root ($binDir -replace '^[A-Za-z]:', '') } else { $binDir }
  $rootHome = if ($Root) { Join-Path $Root ($homeDir -replace '^[A-Za-z]:', '') } else { $homeDir }
  $rootBin = Join-Path $rootBinDir 'dropwire.exe'
  $serviceArgs = @('service', 'install')
  if ($Root) { $serviceArgs += @('--root', $Root, '--node', $bin) }
  if ($WinSW) { $serviceArgs += @('--winsw', $WinSW) }

  if ($DryRun) {
    Write-Output 'Dry run: nothing installed. Would run:'
    Write-Output "  copy $file $rootBin"
    Write-Output "  $rootBin init TOKEN --home $rootHome"
    if (-not $NoService) { Write-Output "  $rootBin $($serviceArgs -join ' ')" }
    exit 0
  }

  New-Item -ItemType Directory -Force -Path $rootBinDir | Out-Null
  Move-Item -Force -Path (Join-Path $tmp $file) -Destination $rootBin
  Write-Output "Installed $rootBin ($(& $rootBin --version))"

  if (Test-Path (Join-Path $rootHome 'config.json')) {
    # Installing again (an update): the host keeps its key and enrollment; the token is not used.
    Write-Output "Already enrolled ($rootHome\config.json): kept; the token was not used"
  } else {
    & $rootBin init $Token --home $rootHome
    if ($LASTEXITCODE -ne 0) { Fail "dropwire init failed (exit $LASTEXITCODE)" }
  }

  $serviceDone = $false
  if (-not $NoService) {
    if (-not $admin) {
      Write-Output 'A Windows service needs an administrator PowerShell: run this installer again as administrator to install it.'
    } elseif (-not $WinSW -and -not $Root) {
      Write-Output 'The service needs WinSW 3 (not on any package registry, so not bundled): download WinSW-x64.exe from'
      Write-Output 'https://github.com/winsw/winsw/releases, then run:'
      Write-Output "  & '$bin' service install --winsw C:\path\to\WinSW-x64.exe"
    } else {
      & $rootBin @serviceArgs
      if ($LASTEXITCODE -ne 0) { Fail "dropwire service install failed (exit $LASTEXITCODE)" }
      $serviceDone = $true
    }
  }

  Write-Output ''
  Write-Output 'dropwire is installed.'
  $userPath = [Environment]::GetEnvironmentVariable('Path', 'User')
  if (-not $Root -and -not $admin -and ($userPath -split ';') -notcontains $binDir) {
    [Environment]::SetEnvironmentVariable('Path', ($userPath.TrimEnd(';') + ";$binDir").TrimStart(';'), 'User')
    Write-Output "Added $binDir to your PATH (new terminals)."
  }
  Write-Output 'To undo:'
  if ($serviceDone) { Write-Output "  & '$bin' service uninstall" }
  Write-Output "  Remove-Item '$rootBin'"
  Write-Output "  Remove-Item -Recurse '$rootHome'   (the agent's key, config and journal)"
} finally {
  Remove-Item -Recurse -Force -Path $tmp -ErrorAction SilentlyContinue
}
