; Inno Setup 6 script: the Windows installer of ADTN Studio.
; packaging/build.py compiles it after PyInstaller, passing the values below with /D...:
;   ISCC /DAppVersion=0.1.0 /DSourceDir=dist\adtn-studio /DIconFile=build\icons\adtn-studio.ico
;        /DOutputDir=dist /DOutputBaseName=adtn-studio-0.1.0-windows-x86_64-setup adtn_studio.iss
; Installs for all users (Program Files) or, if the user chooses, for the current user only.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef SourceDir
  #define SourceDir "..\..\dist\adtn-studio"
#endif
#ifndef IconFile
  #define IconFile "..\..\build\icons\adtn-studio.ico"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif
#ifndef OutputBaseName
  #define OutputBaseName "adtn-studio-" + AppVersion + "-windows-x86_64-setup"
#endif

#define AppName "ADTN Studio"
#define AppExe "adtn-studio.exe"

[Setup]
AppId={{6F1D2C3B-8A4E-4F7B-9C2D-ADA7A5702026}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=ADTN Studio contributors
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=admin
PrivilegesRequiredOverridesAllowed=dialog commandline
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename={#OutputBaseName}
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName}
Compression=lzma2
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent
